//! A JSON field that may be absent, explicitly `null`, or set: docker writes `"Cmd": null`
//! where an OCI tool leaves the key out, and a config strata reads and writes again must say
//! what it said.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A field kept as absent, `null` or a value. Use with
/// `#[serde(default, skip_serializing_if = "Nullable::is_absent")]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Nullable<T> {
    /// The key is not there.
    #[default]
    Absent,
    /// The key is there with `null`.
    Null,
    /// The key has a value.
    Set(T),
}

impl<T> Nullable<T> {
    /// Whether the key is missing (so it is not written).
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }

    /// The value, if set.
    pub fn get(&self) -> Option<&T> {
        match self {
            Self::Set(v) => Some(v),
            _ => None,
        }
    }

    /// The value to edit, made (from `T::default()`) if the field is absent or `null`.
    pub fn get_or_default(&mut self) -> &mut T
    where
        T: Default,
    {
        if !matches!(self, Self::Set(_)) {
            *self = Self::Set(T::default());
        }
        match self {
            Self::Set(v) => v,
            _ => unreachable!("just set"),
        }
    }

    /// The value, taken out (the field becomes absent).
    pub fn take(&mut self) -> Option<T> {
        match std::mem::take(self) {
            Self::Set(v) => Some(v),
            _ => None,
        }
    }
}

impl<T> From<Option<T>> for Nullable<T> {
    /// `Some(v)` is set, `None` is `null`.
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Self::Set)
    }
}

impl<T: Serialize> Serialize for Nullable<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Set(v) => v.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nullable<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<T>::deserialize(d)?.into())
    }
}
