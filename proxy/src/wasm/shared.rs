//! Process-wide shared data (with compare-and-swap) and shared queues, keyed by `vm_id`:
//! the only channel between the VMs of different workers. They live in the host, so a VM
//! rebuilt after a trap finds them as it left them. As in Envoy, a vm_id's data and queues
//! go when nothing uses the vm_id any more: here, when the last plugin naming it is dropped
//! (see [`VmIdHold`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::mpsc::UnboundedSender;

use super::status::Status;

/// A key's value and its compare-and-swap token.
type Entry = (Vec<u8>, u32);

#[derive(Default)]
struct SharedData {
    /// vm_id → key → (value, cas).
    entries: HashMap<String, HashMap<Vec<u8>, Entry>>,
    /// One process-wide CAS counter; 0 is never handed out.
    last_cas: u32,
    /// How many plugins hold each vm_id.
    holders: HashMap<String, usize>,
}

/// A plugin's hold on its vm_id's shared data and queues. A config change that keeps the
/// vm_id loads the new plugin before it drops the old one, so the data carries over; when the
/// last plugin of a vm_id goes, so do its data and queues, as Envoy drops them with the last
/// VM of the vm_id.
pub struct VmIdHold {
    vm_id: String,
}

impl VmIdHold {
    pub fn new(vm_id: &str) -> Self {
        *data().holders.entry(vm_id.to_owned()).or_default() += 1;
        Self {
            vm_id: vm_id.to_owned(),
        }
    }
}

impl Drop for VmIdHold {
    fn drop(&mut self) {
        {
            let mut data = data();
            let Some(holders) = data.holders.get_mut(&self.vm_id) else {
                return;
            };
            *holders -= 1;
            if *holders > 0 {
                return;
            }
            data.holders.remove(&self.vm_id);
            data.entries.remove(&self.vm_id);
        }
        let mut queues = queues();
        let mut gone = Vec::new();
        queues.by_name.retain(|(vm_id, _), token| {
            let keep = *vm_id != self.vm_id;
            if !keep {
                gone.push(*token);
            }
            keep
        });
        for token in gone {
            queues.by_token.remove(&token);
        }
    }
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    /// The last registrant's notification channel.
    owner: Option<UnboundedSender<u32>>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    by_token: HashMap<u32, Queue>,
    last_token: u32,
}

fn data() -> MutexGuard<'static, SharedData> {
    static DATA: OnceLock<Mutex<SharedData>> = OnceLock::new();
    DATA.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn queues() -> MutexGuard<'static, Queues> {
    static QUEUES: OnceLock<Mutex<Queues>> = OnceLock::new();
    QUEUES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The value and its CAS.
pub fn get(vm_id: &str, key: &[u8]) -> Result<(Vec<u8>, u32), Status> {
    data()
        .entries
        .get(vm_id)
        .and_then(|entries| entries.get(key))
        .cloned()
        .ok_or(Status::NotFound)
}

/// Stores `value` unless `cas` is set and no longer current.
pub fn set(vm_id: &str, key: &[u8], value: Vec<u8>, cas: u32) -> Result<(), Status> {
    let mut data = data();
    data.last_cas = data.last_cas.wrapping_add(1).max(1);
    let fresh = data.last_cas;
    let entries = data.entries.entry(vm_id.to_owned()).or_default();
    match entries.get_mut(key) {
        Some((_, stored)) if cas != 0 && cas != *stored => Err(Status::CasMismatch),
        Some(entry) => {
            *entry = (value, fresh);
            Ok(())
        }
        None => {
            entries.insert(key.to_vec(), (value, fresh));
            Ok(())
        }
    }
}

/// Creates or reopens the queue `(vm_id, name)`; its notifications now go to `owner`.
pub fn register_queue(vm_id: &str, name: &[u8], owner: Option<UnboundedSender<u32>>) -> u32 {
    let mut queues = queues();
    let key = (vm_id.to_owned(), name.to_vec());
    let token = match queues.by_name.get(&key) {
        Some(token) => *token,
        None => {
            queues.last_token += 1;
            let token = queues.last_token;
            queues.by_name.insert(key, token);
            queues.by_token.insert(
                token,
                Queue {
                    items: VecDeque::new(),
                    owner: None,
                },
            );
            token
        }
    };
    if let Some(queue) = queues.by_token.get_mut(&token) {
        queue.owner = owner;
    }
    token
}

pub fn resolve_queue(vm_id: &str, name: &[u8]) -> Result<u32, Status> {
    queues()
        .by_name
        .get(&(vm_id.to_owned(), name.to_vec()))
        .copied()
        .ok_or(Status::NotFound)
}

pub fn enqueue(token: u32, value: Vec<u8>) -> Result<(), Status> {
    let mut queues = queues();
    let queue = queues.by_token.get_mut(&token).ok_or(Status::NotFound)?;
    queue.items.push_back(value);
    if let Some(owner) = &queue.owner {
        // The registrant's worker may be gone; the item stays for whoever registers next.
        let _ = owner.send(token);
    }
    Ok(())
}

pub fn dequeue(token: u32) -> Result<Vec<u8>, Status> {
    let mut queues = queues();
    let queue = queues.by_token.get_mut(&token).ok_or(Status::NotFound)?;
    queue.items.pop_front().ok_or(Status::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_ids_data_and_queues_go_with_its_last_plugin() {
        let vm = "hold-test-vm";
        let first = VmIdHold::new(vm);
        set(vm, b"k", b"v".to_vec(), 0).unwrap();
        let queue = register_queue(vm, b"q", None);
        enqueue(queue, b"item".to_vec()).unwrap();
        // A config change: the new plugin holds the vm_id before the old one goes.
        let second = VmIdHold::new(vm);
        drop(first);
        assert_eq!(get(vm, b"k").unwrap().0, b"v");
        assert_eq!(resolve_queue(vm, b"q"), Ok(queue));
        drop(second);
        assert_eq!(get(vm, b"k"), Err(Status::NotFound));
        assert_eq!(resolve_queue(vm, b"q"), Err(Status::NotFound));
        assert_eq!(enqueue(queue, b"late".to_vec()), Err(Status::NotFound));
    }

    #[test]
    fn compare_and_swap_follows_envoy() {
        let vm = "cas-test-vm";
        assert_eq!(get(vm, b"k"), Err(Status::NotFound));
        set(vm, b"k", b"1".to_vec(), 12345).expect("a new key ignores cas");
        let (value, cas) = get(vm, b"k").unwrap();
        assert_eq!(value, b"1");
        assert_ne!(cas, 0);
        assert_eq!(
            set(vm, b"k", b"2".to_vec(), cas.wrapping_add(1)),
            Err(Status::CasMismatch)
        );
        set(vm, b"k", b"2".to_vec(), cas).unwrap();
        assert_eq!(
            set(vm, b"k", b"3".to_vec(), cas),
            Err(Status::CasMismatch),
            "the old cas is spent"
        );
        set(vm, b"k", b"3".to_vec(), 0).expect("cas 0 always writes");
        assert_eq!(get(vm, b"k").unwrap().0, b"3");
        assert_eq!(
            get("other-vm", b"k"),
            Err(Status::NotFound),
            "vm_ids are separate namespaces"
        );
    }

    #[test]
    fn queues_deliver_in_order_and_notify_the_last_registrant() {
        let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
        let (second_tx, mut second_rx) = tokio::sync::mpsc::unbounded_channel();
        let token = register_queue("queue-test-vm", b"q", Some(first_tx));
        assert_eq!(
            register_queue("queue-test-vm", b"q", Some(second_tx)),
            token,
            "same name, same token"
        );
        assert_eq!(resolve_queue("queue-test-vm", b"q"), Ok(token));
        assert_eq!(
            resolve_queue("queue-test-vm", b"nope"),
            Err(Status::NotFound)
        );
        enqueue(token, b"a".to_vec()).unwrap();
        enqueue(token, b"b".to_vec()).unwrap();
        assert_eq!(second_rx.try_recv(), Ok(token));
        assert!(first_rx.try_recv().is_err());
        assert_eq!(dequeue(token), Ok(b"a".to_vec()));
        assert_eq!(dequeue(token), Ok(b"b".to_vec()));
        assert_eq!(dequeue(token), Err(Status::Empty));
        assert_eq!(enqueue(u32::MAX, vec![]), Err(Status::NotFound));
    }
}
