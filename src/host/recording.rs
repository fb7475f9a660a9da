//! A host that records commands instead of running them, for tests without
//! root. It answers exit status 0 and no output unless told otherwise: a
//! chosen call can fail (to test what a failure leaves behind), and a
//! program can be given the standard output it prints.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::command::{Command, Host};

#[derive(Default)]
pub struct RecordingHost {
    pub commands: Mutex<Vec<Command>>,
    /// Exit codes by call number (0 is the first command run).
    failures: Mutex<BTreeMap<usize, i32>>,
    /// Standard output by program name.
    outputs: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl RecordingHost {
    /// A host whose call number `call` (counting from 0) exits with `code`.
    pub fn failing_at(call: usize, code: i32) -> RecordingHost {
        let host = RecordingHost::default();
        host.failures.lock().unwrap().insert(call, code);
        host
    }

    /// Make every run of `program` (its file name) print `stdout`.
    pub fn answer(&self, program: &str, stdout: &str) {
        self.outputs.lock().unwrap().insert(program.to_string(), stdout.as_bytes().to_vec());
    }

    /// The programs run so far, in order.
    pub fn programs(&self) -> Vec<String> {
        self.commands.lock().unwrap().iter().map(|command| command.program().to_string()).collect()
    }

    fn record(&self, command: &Command) -> (i32, Vec<u8>) {
        let mut commands = self.commands.lock().unwrap();
        let call = commands.len();
        commands.push(command.clone());
        let code = self.failures.lock().unwrap().get(&call).copied().unwrap_or(0);
        let stdout = self.outputs.lock().unwrap().get(command.program()).cloned().unwrap_or_default();
        (code, stdout)
    }
}

impl Host for RecordingHost {
    fn status(&self, command: &Command) -> anyhow::Result<i32> {
        Ok(self.record(command).0)
    }

    fn output(&self, command: &Command) -> anyhow::Result<(i32, Vec<u8>)> {
        Ok(self.record(command))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_call_fails_and_answers_are_given() {
        let log = std::path::Path::new("/nonexistent.log");
        let host = RecordingHost::failing_at(1, 2);
        host.answer("gcc", "gcc (Debian 12.2.0-14) 12.2.0\n");
        assert!(host.run(&Command::on_host("make", ["defconfig"], log)).is_ok());
        let error = host.run(&Command::on_host("/usr/bin/make", ["olddefconfig"], log)).unwrap_err();
        assert!(error.to_string().contains("exit status 2"), "{error}");
        assert_eq!(
            host.capture(&Command::on_host("gcc", ["--version"], log)).unwrap(),
            "gcc (Debian 12.2.0-14) 12.2.0\n"
        );
        assert_eq!(host.programs(), ["make", "make", "gcc"]);
    }
}
