//! The words users see for the control API's enums: the proto names without their prefix, in lower
//! case (`JOB_STATUS_SUCCESS` → "success"). The CLI prints and parses these, the controller logs them,
//! and nothing else spells a status: a status added to the proto gets its word here by construction.

use crate::pb::{JobStatus, StepKind, StepStatus};

/// `JOB_STATUS_SUCCESS` with prefix `JOB_STATUS_` → "success".
fn word_of(name: &'static str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

macro_rules! words {
    ($ty:ident, $prefix:literal, [$($variant:ident),+ $(,)?]) => {
        impl $ty {
            /// Every value a job or step can have (not `Unspecified`).
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The user-facing word: "unspecified" for a value not set.
            pub fn word(self) -> String {
                word_of(self.as_str_name(), $prefix)
            }

            /// The value a word names; `None` for anything else (also "unspecified").
            pub fn from_word(word: &str) -> Option<$ty> {
                Self::ALL.iter().copied().find(|v| v.word() == word)
            }
        }
    };
}

words!(
    JobStatus,
    "JOB_STATUS_",
    [
        Queued,
        Provisioning,
        Running,
        Success,
        Failure,
        Error,
        Cancelled,
        Skipped
    ]
);
words!(
    StepStatus,
    "STEP_STATUS_",
    [
        Pending, Running, Success, Failure, Error, Skipped, Cancelled
    ]
);
words!(StepKind, "STEP_KIND_", [Checkout, Install, Script, Config]);

impl JobStatus {
    /// Success, failure, error, cancelled and skipped: nothing changes a job after that.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Success
                | JobStatus::Failure
                | JobStatus::Error
                | JobStatus::Cancelled
                | JobStatus::Skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_come_from_the_proto_names_and_round_trip() {
        assert_eq!(JobStatus::Success.word(), "success");
        assert_eq!(JobStatus::Unspecified.word(), "unspecified");
        assert_eq!(StepStatus::Skipped.word(), "skipped");
        assert_eq!(StepKind::Config.word(), "config");
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::from_word(&status.word()), Some(*status));
        }
        for status in StepStatus::ALL {
            assert_eq!(StepStatus::from_word(&status.word()), Some(*status));
        }
        assert_eq!(JobStatus::from_word("unspecified"), None);
        assert_eq!(JobStatus::from_word("failed"), None);
        // Every proto value but "unspecified" is listed.
        assert_eq!(JobStatus::ALL.len(), 8);
        assert_eq!(StepStatus::ALL.len(), 7);
    }
}
