//! Container ids: what is acceptable as one (runc's rule; an id is never a path).

use crate::error::{Error, Result};

/// Whether `id` is acceptable as a container id (runc's rule; never a path).
pub fn validate_id(id: &str) -> Result<()> {
    let shown = || {
        if id.chars().count() > 40 {
            format!(
                "{}... ({} characters)",
                id.chars().take(32).collect::<String>(),
                id.chars().count()
            )
        } else {
            format!("{id:?}")
        }
    };
    if id.len() > MAX_ID_LEN {
        return Err(Error::InvalidId(format!(
            "{}: longer than {MAX_ID_LEN} characters (it names the container's state directory)",
            shown()
        )));
    }
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(format!(
            "{}: only letters, digits and _ + - . (not \".\" or \"..\")",
            shown()
        )))
    }
}

/// The longest container id: a file name's limit, for the id names the state directory (and
/// the container's cgroup).
pub const MAX_ID_LEN: usize = 255;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "abc-123", "x_y+z.1"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "a\nb"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_id(&"a".repeat(MAX_ID_LEN)).is_ok());
        let e = validate_id(&"a".repeat(2000)).unwrap_err().to_string();
        assert!(
            e.contains("(2000 characters)") && e.contains("longer than 255"),
            "{e}"
        );
        assert!(e.len() < 200, "the whole id is not echoed: {e}");
    }
}
