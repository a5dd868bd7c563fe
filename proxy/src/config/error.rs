//! Config errors name the file, the field path and the reason, so an operator can fix the
//! right line without guessing.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a config, at a field path such as `listeners[0].routes[1].cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", Invalid { file, problems })]
    Invalid {
        file: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    pub fn invalid(
        file: impl Into<PathBuf>,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            file: file.into(),
            problems: vec![ConfigProblem {
                path: path.into(),
                reason: reason.into(),
            }],
        }
    }

    /// The problems found, empty for a read error.
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid { problems, .. } => problems,
        }
    }
}

struct Invalid<'a> {
    file: &'a PathBuf,
    problems: &'a [ConfigProblem],
}

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.problems {
            [one] => write!(f, "{file}: {}: {}", one.path, one.reason),
            many => {
                write!(f, "{file}: {} problems", many.len())?;
                for problem in many {
                    write!(f, "\n  {}: {}", problem.path, problem.reason)?;
                }
                Ok(())
            }
        }
    }
}
