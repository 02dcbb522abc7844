//! Signal names and numbers as runc accepts them (`KILL`, `SIGKILL`, `9`).

use nix::sys::signal::Signal;

use crate::error::{Error, Result};

/// Parse a signal given by name (with or without `SIG`, any case) or number.
pub fn parse(s: &str) -> Result<Signal> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::UnknownSignal(s.to_string()));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    // SIGIOT and SIGPOLL are aliases that nix spells differently.
    let name = match name.as_str() {
        "SIGIOT" => "SIGABRT".to_string(),
        "SIGPOLL" => "SIGIO".to_string(),
        "SIGCLD" => "SIGCHLD".to_string(),
        _ => name,
    };
    name.parse::<Signal>()
        .map_err(|_| Error::UnknownSignal(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse("SIGUSR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse("IOT").unwrap(), Signal::SIGABRT);
    }

    #[test]
    fn unknown_is_an_error() {
        assert!(matches!(parse("SIGFOO"), Err(Error::UnknownSignal(_))));
        assert!(matches!(parse("99"), Err(Error::UnknownSignal(_))));
        assert!(matches!(parse(""), Err(Error::UnknownSignal(_))));
    }
}
