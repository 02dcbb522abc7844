//! Signals as runc and containerd give them: by name (`KILL`, `SIGKILL`, `RTMIN+3`) or by
//! number (`9`, `37`), including signal 0 (a liveness probe) and the real-time signals that
//! `nix`'s `Signal` cannot hold (systemd stops on `SIGRTMIN+3`).

use std::fmt;

use crate::error::{Error, Result};

/// The first real-time signal as the C library names it (glibc keeps 32 and 33 for itself),
/// the base of `SIGRTMIN+n`: Docker's `STOPSIGNAL SIGRTMIN+3` arrives as 37.
pub const SIGRTMIN: i32 = 34;
/// The last real-time signal (`SIGRTMAX`), the highest number `kill(2)` takes on Linux.
pub const SIGRTMAX: i32 = 64;

/// A signal `kill(2)` can send: 0, a standard signal (1..=31) or a real-time one (32..=64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sig(i32);

impl Sig {
    /// SIGKILL.
    pub const KILL: Sig = Sig(libc::SIGKILL);
    /// SIGTERM.
    pub const TERM: Sig = Sig(libc::SIGTERM);

    /// Its number.
    pub fn number(self) -> i32 {
        self.0
    }

    /// The same signal as `nix` names it; `None` for 0 and the real-time signals.
    pub fn as_nix(self) -> Option<nix::sys::signal::Signal> {
        nix::sys::signal::Signal::try_from(self.0).ok()
    }

    /// Send it to `pid` with `kill(2)`.
    pub fn send(self, pid: i32) -> nix::Result<()> {
        // SAFETY: kill(2) takes two integers and touches no memory of ours; the number is
        // one the kernel knows (0..=64, checked when the `Sig` was made).
        let r = unsafe { libc::kill(pid, self.0) };
        nix::errno::Errno::result(r).map(drop)
    }
}

impl TryFrom<i32> for Sig {
    type Error = Error;

    fn try_from(n: i32) -> Result<Sig> {
        if (0..=SIGRTMAX).contains(&n) {
            Ok(Sig(n))
        } else {
            Err(Error::UnknownSignal(n.to_string()))
        }
    }
}

impl From<nix::sys::signal::Signal> for Sig {
    fn from(s: nix::sys::signal::Signal) -> Sig {
        Sig(s as i32)
    }
}

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("0"),
            n if n == SIGRTMIN => f.write_str("SIGRTMIN"),
            n if n == SIGRTMAX => f.write_str("SIGRTMAX"),
            n if n > SIGRTMIN && n <= (SIGRTMIN + SIGRTMAX) / 2 => {
                write!(f, "SIGRTMIN+{}", n - SIGRTMIN)
            }
            n if n > SIGRTMIN => write!(f, "SIGRTMAX-{}", SIGRTMAX - n),
            n => match self.as_nix() {
                Some(s) => f.write_str(s.as_str()),
                None => write!(f, "SIG{n}"),
            },
        }
    }
}

/// Parse a signal given by number (0..=64) or by name, with or without `SIG`, any case:
/// `TERM`, `sigkill`, `RTMIN`, `RTMIN+3`, `SIGRTMAX-1`.
pub fn parse(s: &str) -> Result<Sig> {
    let unknown = || Error::UnknownSignal(s.to_string());
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Sig::try_from(n).map_err(|_| unknown());
    }
    let upper = t.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rt) = real_time(bare) {
        return rt.ok_or_else(unknown);
    }
    // SIGIOT, SIGPOLL and SIGCLD are aliases that nix spells differently.
    let name = match bare {
        "IOT" => "SIGABRT".to_string(),
        "POLL" => "SIGIO".to_string(),
        "CLD" => "SIGCHLD".to_string(),
        _ => format!("SIG{bare}"),
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(Sig::from)
        .map_err(|_| unknown())
}

/// `RTMIN`, `RTMIN+n`, `RTMAX`, `RTMAX-n` (upper case, no `SIG`): `None` when the name is
/// not of that shape, `Some(None)` when it is but lands outside the real-time range.
fn real_time(bare: &str) -> Option<Option<Sig>> {
    let (base, rest, sign) = if let Some(rest) = bare.strip_prefix("RTMIN") {
        (SIGRTMIN, rest, 1)
    } else if let Some(rest) = bare.strip_prefix("RTMAX") {
        (SIGRTMAX, rest, -1)
    } else {
        return None;
    };
    let offset = match rest {
        "" => Some(0),
        r => r
            .strip_prefix(if sign > 0 { '+' } else { '-' })
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<i32>().ok()),
    };
    Some(
        offset
            .map(|o| base + sign * o)
            .filter(|n| (SIGRTMIN..=SIGRTMAX).contains(n))
            .map(Sig),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    fn n(s: &str) -> i32 {
        parse(s).unwrap().number()
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("KILL").unwrap(), Signal::SIGKILL.into());
        assert_eq!(parse("sigterm").unwrap(), Sig::TERM);
        assert_eq!(parse("9").unwrap(), Sig::KILL);
        assert_eq!(n("SIGUSR1"), libc::SIGUSR1);
        assert_eq!(n("IOT"), libc::SIGABRT);
        assert_eq!(n("SIGCLD"), libc::SIGCHLD);
    }

    #[test]
    fn signal_zero_and_real_time_numbers() {
        assert_eq!(n("0"), 0);
        for k in 32..=64 {
            assert_eq!(n(&k.to_string()), k);
        }
        assert_eq!(Sig::try_from(37).unwrap().number(), 37);
        assert!(Sig::try_from(37).unwrap().as_nix().is_none());
    }

    #[test]
    fn real_time_names() {
        assert_eq!(n("RTMIN"), 34);
        assert_eq!(n("RTMIN+3"), 37);
        assert_eq!(n("SIGRTMIN+3"), 37);
        assert_eq!(n("sigrtmin+3"), 37);
        assert_eq!(n("RTMAX"), 64);
        assert_eq!(n("RTMAX-1"), 63);
        assert_eq!(n("SIGRTMAX-30"), 34);
    }

    #[test]
    fn names_round_trip() {
        for k in 1..=64 {
            if k == 32 || k == 33 {
                continue;
            }
            let s = Sig::try_from(k).unwrap();
            assert_eq!(parse(&s.to_string()).unwrap(), s, "{s}");
        }
        assert_eq!(Sig::try_from(37).unwrap().to_string(), "SIGRTMIN+3");
        assert_eq!(Sig::try_from(63).unwrap().to_string(), "SIGRTMAX-1");
    }

    #[test]
    fn unknown_is_an_error() {
        for bad in [
            "SIGFOO", "99", "65", "-1", "", "RTMIN+31", "RTMAX-31", "RTMIN-1", "RTMAX+1", "RTMIN+",
            "RTMIN3",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::UnknownSignal(_))),
                "{bad:?} should be unknown"
            );
        }
    }
}
