//! Log lines in the shape runc (logrus) writes, so containerd's runc shim, Docker and
//! Podman can read hull's `--log` file: JSON `{"level","msg","time"}` or text
//! `time="..." level=... msg="..."`.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use super::args::LogFormat;

/// Where log lines go.
enum Sink {
    File(Mutex<File>),
    Stderr,
}

/// A tracing layer that writes logrus-style lines.
pub struct LogLayer {
    sink: Sink,
    format: LogFormat,
    max: Level,
    /// Only the warnings meant for the user ([`hull_container::USER_WARNING`]): the
    /// terminal's default.
    user_only: bool,
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.rest
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.rest
                .push((field.name().to_string(), value.to_string()));
        }
    }
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl LogLayer {
    /// Format one line.
    pub fn line(&self, level: &Level, msg: &str, fields: &[(String, String)]) -> String {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        match self.format {
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("level".into(), level_name(level).into());
                obj.insert("msg".into(), msg.into());
                obj.insert("time".into(), time.into());
                for (k, v) in fields {
                    obj.insert(k.clone(), v.clone().into());
                }
                let mut s = serde_json::Value::Object(obj).to_string();
                s.push('\n');
                s
            }
            LogFormat::Text => {
                let mut s = format!("time={time:?} level={} msg={msg:?}", level_name(level));
                for (k, v) in fields {
                    let _ = write!(s, " {k}={v:?}");
                }
                s.push('\n');
                s
            }
        }
    }

    /// Write one line to the sink.
    pub fn write(&self, level: &Level, msg: &str, fields: &[(String, String)]) {
        let line = self.line(level, msg, fields);
        match &self.sink {
            Sink::File(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            Sink::Stderr => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *meta.level() <= self.max
            && (!self.user_only || meta.target() == hull_container::USER_WARNING)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        self.write(event.metadata().level(), &f.message, &f.rest);
    }
}

/// The configured logger: also used to record the final error of a command.
pub struct Logger {
    layer: std::sync::Arc<LogLayer>,
}

struct Shared(std::sync::Arc<LogLayer>);

impl<S: Subscriber> Layer<S> for Shared {
    fn enabled(&self, meta: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(meta, ctx)
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.0.on_event(event, ctx)
    }
}

impl Logger {
    /// Set up logging for one invocation. With a log file, warnings and errors (debug
    /// with `--debug`) go there; without one, the warnings meant for the user go to stderr
    /// (a failing poststart hook, say), and the rest only with `--debug` or `HULL_LOG`.
    pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) -> std::io::Result<Self> {
        let env_level = std::env::var("HULL_LOG")
            .ok()
            .and_then(|v| v.parse::<Level>().ok());
        let max = if debug {
            Level::DEBUG
        } else {
            env_level.unwrap_or(Level::WARN)
        };
        let asked = debug || env_level.is_some();
        let sink = match log {
            Some(p) => Sink::File(Mutex::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
            None => Sink::Stderr,
        };
        let user_only = log.is_none() && !asked;
        let layer = std::sync::Arc::new(LogLayer {
            sink,
            format,
            max,
            user_only,
        });
        let _ = tracing_subscriber::registry()
            .with(Shared(layer.clone()))
            .try_init();
        Ok(Self { layer })
    }

    /// Record a command's final error in the log file (stderr gets it from the caller).
    pub fn error(&self, msg: &str) {
        if matches!(self.layer.sink, Sink::File(_)) {
            self.layer.write(&Level::ERROR, msg, &[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_logrus_shaped() {
        let l = LogLayer {
            sink: Sink::Stderr,
            format: LogFormat::Json,
            max: Level::INFO,
            user_only: false,
        };
        let line = l.line(&Level::ERROR, "bad \"thing\"", &[]);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "bad \"thing\"");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn text_line_quotes_message() {
        let l = LogLayer {
            sink: Sink::Stderr,
            format: LogFormat::Text,
            max: Level::INFO,
            user_only: false,
        };
        let line = l.line(&Level::WARN, "a b", &[("id".into(), "c1".into())]);
        assert!(
            line.contains("level=warning msg=\"a b\" id=\"c1\""),
            "{line}"
        );
    }
}
