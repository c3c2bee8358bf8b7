//! Stop strings over streamed text. A stop string can span several tokens, so text that could
//! still turn out to be the start of one is held back until the next piece decides; the stop
//! string itself is never released (OpenAI leaves it out of the text).

/// Holds back the tail of the text that might begin a stop string.
#[derive(Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    pending: String,
    hit: bool,
}

impl StopText {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> StopText {
        StopText { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), ..Default::default() }
    }

    /// Adds a piece of generated text and returns the text now safe to release, and whether a
    /// stop string was completed (then nothing after it is released, and later pushes return
    /// nothing).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.hit {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        // The earliest stop string in the text wins.
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            self.hit = true;
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.pending.len() + 1))
                    .rev()
                    .find(|&n| s.is_char_boundary(n) && self.pending.ends_with(&s[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The text still held back, released when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopText::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out += &t;
            if hit {
                return (out, true);
            }
        }
        out += &m.finish();
        (out, false)
    }

    #[test]
    fn stops_across_pieces_and_releases_false_starts() {
        assert_eq!(run(&["END"], &["abc E", "N", "D tail"]), ("abc ".into(), true));
        assert_eq!(run(&["END"], &["abc E", "N", "d"]), ("abc ENd".into(), false));
        assert_eq!(run(&["\n\n", "###"], &["a\n", "b##", "#c"]), ("a\nb".into(), true));
        assert_eq!(run(&[], &["x", "y"]), ("xy".into(), false));
        assert_eq!(run(&[""], &["x"]), ("x".into(), false));
        // Multibyte text and stop strings: never cut inside a character.
        assert_eq!(run(&["é!"], &["café", "é", "!"]), ("café".into(), true));
        assert_eq!(run(&["ü"], &["aé", "b"]), ("aéb".into(), false));
    }

    #[test]
    fn holds_back_only_a_possible_start() {
        let mut m = StopText::new(&["<|end|>".to_string()]);
        assert_eq!(m.push("hello <|"), ("hello ".into(), false));
        assert_eq!(m.push("en"), (String::new(), false));
        assert_eq!(m.push("x"), ("<|enx".into(), false));
    }
}
