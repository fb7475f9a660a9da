//! A host that records commands instead of running them, for tests without root.

use std::sync::Mutex;

use super::{Command, Host};

#[derive(Default)]
pub struct RecordingHost {
    pub commands: Mutex<Vec<Command>>,
}

impl Host for RecordingHost {
    fn status(&self, command: &Command) -> anyhow::Result<i32> {
        self.commands.lock().unwrap().push(command.clone());
        Ok(0)
    }
}
