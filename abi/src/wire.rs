//! Closed sets on the wire: one definition per set.
//!
//! [`wire_enum!`](crate::wire_enum) defines a `#[repr]` enum together with
//! everything the two sides need from it, so that no second list of its
//! members exists anywhere:
//!
//! - `TryFrom<wire>` (the code the other side wrote) with an
//!   [`UnknownValue`] error that names the set and the value;
//! - `From<Enum> for wire`;
//! - `ALL` (every member, in definition order), `NAMES` (their names, in the
//!   same order) and `COUNT`;
//! - `name()`: the spelling used on the command line and in reports;
//! - `FromStr` (case-sensitive) with an [`UnknownName`] error listing the
//!   valid names, and `Display` (the name);
//! - the [`WireEnum`] trait, for code generic over the sets (a CLI value
//!   parser, the round-trip tests).
//!
//! A hand-written `macro_rules!` rather than the `num_enum` crate: `num_enum`
//! gives only the wire conversion (`TryFromPrimitive`), so the names, `ALL`
//! and `FromStr` would still be a second hand-kept list, and the crate would
//! end abi's "zero dependencies".

use core::fmt;

/// A wire value that is no member of its set (e.g. a workload code the VMM
/// does not know, a port nobody listens on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownValue<T> {
    /// The set, e.g. `"workload"`.
    pub set: &'static str,
    /// The value found.
    pub value: T,
}

impl<T: fmt::Display> fmt::Display for UnknownValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} code {}", self.set, self.value)
    }
}

/// A name that is no member of its set. It does not hold the name given
/// (abi has no allocator); callers print that themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownName {
    /// The set, e.g. `"workload"`.
    pub set: &'static str,
    /// Every valid name, in definition order.
    pub valid: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {}: valid names are ", self.set)?;
        for (i, name) in self.valid.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// What every [`wire_enum!`](crate::wire_enum) set provides, for code
/// generic over the sets. The same items exist as inherent items (`ALL`,
/// `NAMES`, `name()`) for direct use.
pub trait WireEnum:
    Copy
    + Eq
    + fmt::Debug
    + fmt::Display
    + core::str::FromStr<Err = UnknownName>
    + TryFrom<Self::Wire, Error = UnknownValue<Self::Wire>>
    + 'static
{
    /// The integer type of the wire value.
    type Wire: Copy + Eq + fmt::Debug + fmt::Display;
    /// The set's name, e.g. `"workload"`.
    const SET: &'static str;
    /// Every member, in definition order.
    fn all() -> &'static [Self];
    /// The members' names, in the order of [`WireEnum::all`].
    fn names() -> &'static [&'static str];
    /// The member's name.
    fn name(&self) -> &'static str;
    /// The member's wire value.
    fn wire(self) -> Self::Wire;
}

/// Defines a closed set that crosses the guest/host boundary, once.
///
/// ```
/// abi::wire_enum! {
///     /// A colour.
///     pub enum Colour: u32, "colour" {
///         /// Red.
///         Red = 1 => "red",
///         /// Dark blue.
///         DarkBlue = 2 => "dark-blue",
///     }
/// }
/// assert_eq!(Colour::try_from(2), Ok(Colour::DarkBlue));
/// assert_eq!(Colour::DarkBlue.name(), "dark-blue");
/// assert_eq!("red".parse(), Ok(Colour::Red));
/// assert_eq!(Colour::ALL, [Colour::Red, Colour::DarkBlue]);
/// assert!(Colour::try_from(3).is_err() && "Red".parse::<Colour>().is_err());
/// ```
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $wire:ty, $set:literal {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $code:literal => $spelling:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr($wire)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant = $code,
            )+
        }

        impl $name {
            /// The set's name, as error messages say it.
            pub const SET: &'static str = $set;
            /// Number of members.
            pub const COUNT: usize = [$($spelling),+].len();
            /// Every member, in definition order.
            pub const ALL: [Self; Self::COUNT] = [$(Self::$variant),+];
            /// The members' names, in the order of `ALL`.
            pub const NAMES: [&'static str; Self::COUNT] = [$($spelling),+];

            /// The name used on the command line and in reports.
            pub const fn name(&self) -> &'static str {
                match *self {
                    $(Self::$variant => $spelling,)+
                }
            }

            /// The value on the wire.
            pub const fn wire(self) -> $wire {
                self as $wire
            }
        }

        impl ::core::convert::TryFrom<$wire> for $name {
            type Error = $crate::wire::UnknownValue<$wire>;
            fn try_from(value: $wire) -> ::core::result::Result<Self, Self::Error> {
                match value {
                    $($code => Ok(Self::$variant),)+
                    value => Err($crate::wire::UnknownValue { set: $set, value }),
                }
            }
        }

        impl ::core::convert::From<$name> for $wire {
            fn from(member: $name) -> $wire {
                member as $wire
            }
        }

        impl ::core::str::FromStr for $name {
            type Err = $crate::wire::UnknownName;
            fn from_str(s: &str) -> ::core::result::Result<Self, Self::Err> {
                match s {
                    $($spelling => Ok(Self::$variant),)+
                    _ => Err($crate::wire::UnknownName {
                        set: $set,
                        valid: &Self::NAMES,
                    }),
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl $crate::wire::WireEnum for $name {
            type Wire = $wire;
            const SET: &'static str = $set;
            fn all() -> &'static [Self] {
                &Self::ALL
            }
            fn names() -> &'static [&'static str] {
                &Self::NAMES
            }
            fn name(&self) -> &'static str {
                $name::name(self)
            }
            fn wire(self) -> $wire {
                self as $wire
            }
        }
    };
}

/// Checks a [`WireEnum`] set for the unit tests of the modules that define
/// one: every member round-trips wire -> member -> wire and name -> member
/// -> name, names and wire values are unique, and `unknown_wire` and
/// `unknown_name` give the typed errors.
#[cfg(test)]
pub(crate) fn check_set<T: WireEnum>(unknown_wire: T::Wire, unknown_name: &str) {
    let all = T::all();
    assert!(!all.is_empty(), "{}: empty set", T::SET);
    assert_eq!(all.len(), T::names().len(), "{}", T::SET);
    for (i, &m) in all.iter().enumerate() {
        assert_eq!(T::try_from(m.wire()), Ok(m), "{}: {m:?}", T::SET);
        assert_eq!(m.name(), T::names()[i], "{}: {m:?}", T::SET);
        assert_eq!(m.name().parse::<T>(), Ok(m), "{}: {m:?}", T::SET);
        assert_eq!(m.to_string(), m.name());
        for &other in &all[i + 1..] {
            assert_ne!(m.wire(), other.wire(), "{}: duplicate code", T::SET);
            assert_ne!(m.name(), other.name(), "{}: duplicate name", T::SET);
        }
    }
    assert_eq!(
        T::try_from(unknown_wire),
        Err(UnknownValue {
            set: T::SET,
            value: unknown_wire
        })
    );
    let err = unknown_name.parse::<T>().unwrap_err();
    assert_eq!((err.set, err.valid), (T::SET, T::names()));
    let shown = err.to_string();
    for name in T::names() {
        assert!(shown.contains(name), "{shown}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::wire_enum! {
        /// A set only the tests use.
        enum Sample: u16, "sample" {
            /// Zero.
            Zero = 0 => "zero",
            /// Far away.
            FarAway = 0x3f8 => "far-away",
        }
    }

    #[test]
    fn test_sample_set() {
        check_set::<Sample>(1, "Zero");
        assert_eq!(Sample::SET, "sample");
        assert_eq!(Sample::COUNT, 2);
        assert_eq!(Sample::FarAway.wire(), 0x3f8);
        assert_eq!(u16::from(Sample::FarAway), 0x3f8);
        assert_eq!("far-away".parse(), Ok(Sample::FarAway));
        assert!("far_away".parse::<Sample>().is_err());
        assert!("".parse::<Sample>().is_err());
    }

    #[test]
    fn test_errors_display() {
        let e = Sample::try_from(7).unwrap_err();
        assert_eq!(e.to_string(), "unknown sample code 7");
        let e = "x".parse::<Sample>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown sample: valid names are zero, far-away"
        );
    }
}
