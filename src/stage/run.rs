//! `run` stage: a shell script (inline or from a file) run with `sh -e` in the
//! tree; recipe `env:` is added to the clean environment. An inline `sh:` is
//! what the recipe wrote and runs as `sh -e -c TEXT`; a `script:` file runs by
//! path from a copy put in the tree for the run, so its text is in no argv and
//! no error message (errors name the file as the recipe wrote it).

use std::io::Read;

use anyhow::{Context, Result};

use super::chroot::{run_chrooted, run_script_chrooted, ScriptFile};
use super::context::{changed_during_build, StageContext};
use crate::recipe::{Run, Script};

pub fn run(stage: &Run, context: &StageContext<'_>) -> Result<()> {
    match &stage.script {
        Script::Inline(text) => run_chrooted(context, &["/bin/sh", "-e", "-c", text, "rootsmith-run"], &stage.env),
        Script::File(path) => {
            let mut text = Vec::new();
            crate::fileops::open_regular(&path.resolved)
                .and_then(|mut file| file.read_to_end(&mut text))
                .with_context(|| format!("reading the script `{}`", path.written))?;
            // The text that runs is the text the key was made of.
            let planned = &context.planned_digest(&path.written)?.sha256;
            let read = crate::digest::sha256_hex(&text);
            if &read != planned {
                return Err(changed_during_build(
                    &path.written,
                    &format!("sha256 {planned}"),
                    &format!("sha256 {read}"),
                ));
            }
            let name = path
                .resolved
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "script".to_string());
            let script = ScriptFile { name: &name, text: &text, label: format!("script `{}`", path.written) };
            run_script_chrooted(context, &script, &stage.env)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::host::{CommandError, RecordingHost};
    use crate::recipe::LocalPath;

    fn planned_script(written: &str, path: &std::path::Path) -> crate::cache::FileDigest {
        crate::cache::FileDigest {
            path: written.into(),
            kind: "file".into(),
            mode: 0o644,
            sha256: crate::digest::hash_file(path).unwrap(),
        }
    }

    #[test]
    fn a_script_edited_after_the_plan_does_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("bin")).unwrap();
        fs_err::write(tree.join("bin/sh"), "").unwrap();
        let script = dir.path().join("configure.sh");
        fs_err::write(&script, "echo planned\n").unwrap();
        let planned = [planned_script("configure.sh", &script)];
        fs_err::write(&script, "echo edited\n").unwrap();
        let layout = crate::cache::Layout::new(&dir.path().join("cache"));
        let host = RecordingHost::default();
        let context = StageContext::for_test(&host, &tree, dir.path(), &layout, 0).with_planned_files(&planned);
        let stage = Run {
            script: Script::File(LocalPath { written: "configure.sh".into(), resolved: script }),
            env: BTreeMap::new(),
        };
        let error = format!("{:#}", run(&stage, &context).unwrap_err());
        assert!(error.starts_with("`configure.sh` changed during the build"), "{error}");
        assert!(host.commands.lock().unwrap().is_empty(), "the edited script ran");
    }

    #[test]
    fn a_failing_script_file_is_named_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("bin")).unwrap();
        fs_err::write(tree.join("bin/sh"), "").unwrap();
        let before = crate::layer::Snapshot::take(&tree).unwrap();
        let script = dir.path().join("configure.sh");
        fs_err::write(&script, "echo \"token: hunter2\" > /etc/secret\nfalse\n").unwrap();
        let layout = crate::cache::Layout::new(&dir.path().join("cache"));
        let host = RecordingHost::failing_at(0, 1);
        let planned = [planned_script("scripts/configure.sh", &script)];
        let context = StageContext::for_test(&host, &tree, dir.path(), &layout, 0).with_planned_files(&planned);
        let stage = Run {
            script: Script::File(LocalPath { written: "scripts/configure.sh".into(), resolved: script }),
            env: BTreeMap::new(),
        };
        let error = run(&stage, &context).unwrap_err();
        let text = format!("{error:#}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.starts_with("script `scripts/configure.sh` failed with exit status 1"), "{text}");
        assert!(error.downcast_ref::<CommandError>().is_some());
        let commands = host.commands.lock().unwrap();
        assert_eq!(commands[0].argv, ["/bin/sh", "-e", "/.rootsmith-run/configure.sh"]);
        assert!(!commands[0].argv.concat().contains("hunter2"));
        // The copy in the tree is gone again, and left no trace.
        assert!(!tree.join(".rootsmith-run").exists());
        let after = crate::layer::Snapshot::take(&tree).unwrap();
        let changes: Vec<_> = before.changes(&after).into_iter().filter(|c| !matches!(c, crate::layer::Change::Write(p) if ["sys", "run", "dev", "proc"].contains(&p.to_str().unwrap()))).collect();
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn an_inline_script_is_quoted_short() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("bin")).unwrap();
        fs_err::write(tree.join("bin/sh"), "").unwrap();
        let layout = crate::cache::Layout::new(&dir.path().join("cache"));
        let host = RecordingHost::failing_at(0, 2);
        let context = StageContext::for_test(&host, &tree, dir.path(), &layout, 0);
        let text = format!("apt-get update\n{}", "echo line\n".repeat(1000));
        let stage = Run { script: Script::Inline(text), env: BTreeMap::new() };
        let error = format!("{:#}", run(&stage, &context).unwrap_err());
        assert!(
            error.starts_with("`/bin/sh -e -c apt-get update… rootsmith-run` failed with exit status 2"),
            "{error}"
        );
        assert!(!error.contains("echo line"), "{error}");
    }
}
