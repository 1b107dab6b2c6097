//! The agent identity: exactly 16 bytes on the wire, a canonical lowercase hyphenated UUID in
//! storage, headers and logs.

use std::fmt;
use std::str::FromStr;

/// An agent's `instance_uid`. Construction checks the length, so holders never re-validate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceUid([u8; 16]);

/// Why bytes or text are not an instance uid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInstanceUid {
    #[error("instance_uid must be 16 bytes, got {0}")]
    Length(usize),
    #[error("instance_uid is not a uuid: {0}")]
    Text(String),
}

impl InstanceUid {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh UUIDv7 (time-ordered), as the spec recommends for new identities.
    pub fn new_v7() -> Self {
        Self(*uuid::Uuid::now_v7().as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl TryFrom<&[u8]> for InstanceUid {
    type Error = InvalidInstanceUid;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 16]>::try_from(bytes).map(Self).map_err(|_| InvalidInstanceUid::Length(bytes.len()))
    }
}

impl FromStr for InstanceUid {
    type Err = InvalidInstanceUid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(|u| Self(*u.as_bytes()))
            .map_err(|e| InvalidInstanceUid::Text(e.to_string()))
    }
}

impl fmt::Display for InstanceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl fmt::Debug for InstanceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceUid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_canonical_lowercase_hyphenated() {
        let uid = InstanceUid::from_bytes([0xAB; 16]);
        assert_eq!(uid.to_string(), "abababab-abab-abab-abab-abababababab");
        assert_eq!(uid.to_string().parse::<InstanceUid>(), Ok(uid));
    }

    #[test]
    fn wrong_length_is_rejected() {
        assert_eq!(InstanceUid::try_from(&[1u8; 15][..]), Err(InvalidInstanceUid::Length(15)));
        assert_eq!(InstanceUid::try_from(&[][..]), Err(InvalidInstanceUid::Length(0)));
        assert_eq!(InstanceUid::try_from(&[1u8; 17][..]), Err(InvalidInstanceUid::Length(17)));
    }

    #[test]
    fn v7_uids_differ_and_have_version_7() {
        let a = InstanceUid::new_v7();
        let b = InstanceUid::new_v7();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[6] >> 4, 7);
    }
}
