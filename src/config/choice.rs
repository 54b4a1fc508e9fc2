//! Settings that take one of a fixed set of words (`backend`, `cache.scope`,
//! `log.format`, ...). [`choice!`] declares such an enum once, with the word
//! of each variant, and derives from that one table its serde forms and the
//! refusal of any other word: "`gpu` is not one of `auto`, `fal`, `local`",
//! never a Rust type name.

/// Declares a choice enum: each variant is written `Variant = "word"`.
/// Attributes (doc comments, derives, `#[default]`) pass through.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every accepted word, in declaration order.
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            /// The word configuration uses for this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $word, )+
                }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let given = <String as ::serde::Deserialize>::deserialize(d)?;
                match given.trim().to_ascii_lowercase().as_str() {
                    $( $word => Ok(Self::$variant), )+
                    _ => Err(<D::Error as ::serde::de::Error>::custom(
                        $crate::config::choice::not_one_of(&given, Self::WORDS),
                    )),
                }
            }
        }
    };
}

pub(crate) use choice;

/// The refusal of a word outside a choice. The config crate adds the key.
pub(crate) fn not_one_of(given: &str, words: &[&str]) -> String {
    format!("`{given}` is not one of {}", list(words))
}

/// `a`, `b`, `c`
pub(crate) fn list(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
