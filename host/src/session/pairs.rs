//! Name–value pairs of an upgrade request (its headers, its query), packed for a connection's lifetime.
//!
//! A Centrifugo connection keeps them as long as it lives (a refresh runs the connect hook again), and
//! two strings per pair cost an allocation each: a browser's dozen headers came to more than the rest of
//! an idle connection's session. Packed, they are one string and one table of where each part ends.

/// Pairs in one allocation (plus the table of ends), in their original order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pairs {
    text: Box<str>,
    /// Where each name, then its value, ends in `text`.
    ends: Box<[u32]>,
}

impl Pairs {
    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0;
        self.ends.chunks_exact(2).map(move |ends| {
            let (name_end, value_end) = (ends[0] as usize, ends[1] as usize);
            let pair = (&self.text[start..name_end], &self.text[name_end..value_end]);
            start = value_end;
            pair
        })
    }

    /// The pairs as owned strings (what plugin requests carry).
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// How many pairs there are.
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Pairs {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        let mut text = String::new();
        let mut ends = Vec::new();
        for (name, value) in pairs {
            // Upgrade requests are bounded far below 4 GiB by the HTTP server; past that, stop.
            let Ok(_) = u32::try_from(text.len() + name.as_ref().len() + value.as_ref().len())
            else {
                break;
            };
            text.push_str(name.as_ref());
            ends.push(text.len() as u32);
            text.push_str(value.as_ref());
            ends.push(text.len() as u32);
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_come_back_as_they_went_in() {
        let pairs = [("host", "h:1"), ("", ""), ("cookie", "a=1; b=é"), ("x", "")];
        let packed: Pairs = pairs.iter().copied().collect();
        assert_eq!(packed.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(packed.len(), 4);
        assert_eq!(
            packed.to_vec()[2],
            ("cookie".to_owned(), "a=1; b=é".to_owned())
        );
        assert!(Pairs::default().is_empty());
    }
}
