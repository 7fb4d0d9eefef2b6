//! The built-in presets: how stack traces of Java, Python, Go, Node, Ruby
//! and .NET continue. No regular expression: each line costs a look at its
//! first byte, and a few prefix comparisons only when that byte says a
//! continuation is possible (a line starting with a digit, the usual
//! timestamped log line, is judged in one comparison).
//!
//! A preset never decides that a line *starts* something on its own: every
//! line may be the head of a group (the `java.lang.X: boom` line before the
//! first `at` frame is any text). A line joins the open group only when an
//! enabled preset says it continues it, so `auto` (all presets together)
//! joins nothing that no single preset would join.

/// Which presets are enabled: a bit per preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Presets(u8);

impl Presets {
    /// `at …` frames, `Caused by:`, `Suppressed:`, `... N more`.
    pub(crate) const JAVA: Presets = Presets(1);
    /// `Traceback (most recent call last):` to the final exception line,
    /// with chained exceptions.
    pub(crate) const PYTHON: Presets = Presets(2);
    /// `panic:` / `fatal error:` and the goroutine dump that follows.
    pub(crate) const GO: Presets = Presets(4);
    /// An error followed by `    at …` lines, and util.inspect's `{ [cause]: … }`.
    pub(crate) const NODE: Presets = Presets(8);
    /// `\tfrom file:line:in …` lines and the headers of causes.
    pub(crate) const RUBY: Presets = Presets(16);
    /// `   at …` frames, ` ---> ` inner exceptions, `--- End of …` markers.
    pub(crate) const DOTNET: Presets = Presets(32);
    /// All of them.
    pub(crate) const AUTO: Presets = Presets(63);

    /// The preset called `name` (`auto` for all).
    pub(crate) fn by_name(name: &str) -> Option<Presets> {
        Some(match name {
            "java" => Presets::JAVA,
            "python" => Presets::PYTHON,
            "go" => Presets::GO,
            "node" => Presets::NODE,
            "ruby" => Presets::RUBY,
            "dotnet" => Presets::DOTNET,
            "auto" => Presets::AUTO,
            _ => return None,
        })
    }

    fn has(self, p: Presets) -> bool {
        self.0 & p.0 != 0
    }
}

/// The names [`Presets::by_name`] knows, for error messages and docs.
pub(crate) const PRESET_NAMES: &[&str] = &["auto", "java", "python", "go", "node", "ruby", "dotnet"];

/// Where an open group is, per stateful preset. Zero everywhere: no preset
/// has seen more than the group's head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PresetState {
    /// 0 idle, 1 in the frames after `Traceback`, 2 after the final
    /// exception line, 3 a blank line after it, 4 after a chain header
    /// (`During handling of …`).
    python: u8,
    /// 0 idle, 1 inside a panic or goroutine dump.
    go: u8,
    /// 0 idle, 1 after an `at` frame, 2 and up: inside `{ … }` of depth
    /// `node - 1` (util.inspect's properties and `[cause]`).
    node: u8,
    /// 0 idle, 1 after a `from` frame.
    ruby: u8,
}

/// What a preset set says about a line that follows an open group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The line joins the group, which stays open.
    Join,
    /// The line joins the group and closes it.
    JoinLast,
    /// The line joins only if a later line joins too (a blank line inside
    /// a goroutine dump or between chained Python tracebacks).
    Maybe,
    /// The line does not join: the group is complete.
    Break,
}

/// The state a group starts in when `line` is its head.
pub(crate) fn begin(presets: Presets, line: &[u8]) -> PresetState {
    let mut s = PresetState::default();
    match line.first() {
        Some(b'T') if presets.has(Presets::PYTHON) && is_traceback(line) => s.python = 1,
        Some(b'p' | b'f' | b'g') if presets.has(Presets::GO) && starts_go_dump(line) => s.go = 1,
        _ => {}
    }
    s
}

/// Judges `line` after a group in `state`; returns the verdict and the
/// group's state with the line in it.
pub(crate) fn next(presets: Presets, state: PresetState, line: &[u8]) -> (Verdict, PresetState) {
    let mut new = PresetState::default();
    let mut join = false;
    let mut maybe = false;
    let first = line.first().copied();
    if state == PresetState::default() && !matches!(first, Some(b' ' | b'\t' | b'C')) {
        // The hot path: an idle group and a line that cannot continue it.
        return (Verdict::Break, new);
    }
    let trimmed = trim_start(line);
    if trimmed.is_empty() {
        if presets.has(Presets::PYTHON) && matches!(state.python, 2..=4) {
            maybe = true;
            new.python = if state.python == 4 { 4 } else { 3 };
        }
        if presets.has(Presets::GO) && state.go == 1 {
            maybe = true;
            new.go = 1;
        }
    } else if trimmed.len() < line.len() {
        // Indented.
        let at = trimmed.starts_with(b"at ");
        if at && (presets.has(Presets::JAVA) || presets.has(Presets::DOTNET)) {
            join = true;
        }
        if presets.has(Presets::JAVA)
            && (trimmed.starts_with(b"Caused by: ")
                || trimmed.starts_with(b"Suppressed: ")
                || trimmed.starts_with(b"... ") && (trimmed.ends_with(b" more") || trimmed.ends_with(b"common frames omitted")))
        {
            join = true;
        }
        if presets.has(Presets::DOTNET) && (trimmed.starts_with(b"---> ") || trimmed.starts_with(b"--- End of ")) {
            join = true;
        }
        if presets.has(Presets::RUBY) && (trimmed.starts_with(b"from ") || trimmed.starts_with(b"... ") && trimmed.ends_with(b" levels..."))
        {
            join = true;
            new.ruby = 1;
        }
        if presets.has(Presets::PYTHON) && state.python == 1 {
            join = true;
            new.python = 1;
        }
        if presets.has(Presets::GO) && state.go == 1 && line[0] == b'\t' {
            join = true;
            new.go = 1;
        }
        if presets.has(Presets::NODE) {
            if trimmed.starts_with(b"}") && state.node >= 2 {
                join = true;
                new.node = state.node - 1;
            } else if at
                || state.node >= 2
                || trimmed.starts_with(b"... ") && memchr::memmem::find(trimmed, b"matching cause stack trace").is_some()
            {
                join = true;
                new.node = state.node.max(1);
                if trimmed.ends_with(b"{") {
                    new.node = new.node.saturating_add(1);
                }
            }
        }
    } else {
        if presets.has(Presets::JAVA) && line.starts_with(b"Caused by: ") {
            join = true;
        }
        if presets.has(Presets::PYTHON) {
            match state.python {
                1 => {
                    // The final exception line.
                    join = true;
                    new.python = 2;
                }
                2..=4
                    if line.starts_with(b"During handling of the above exception")
                        || line.starts_with(b"The above exception was the direct cause") =>
                {
                    join = true;
                    new.python = 4;
                }
                4 if is_traceback(line) => {
                    join = true;
                    new.python = 1;
                }
                _ => {}
            }
        }
        if presets.has(Presets::GO) && state.go == 1 && continues_go_dump(line) {
            join = true;
            new.go = 1;
        }
        if presets.has(Presets::NODE) && state.node >= 2 && line.starts_with(b"}") {
            join = true;
            new.node = state.node - 1;
        }
        if presets.has(Presets::RUBY) && state.ruby == 1 && memchr::memmem::find(line, b":in ").is_some() && line.ends_with(b")") {
            join = true;
            new.ruby = 1;
        }
    }
    let verdict = if join {
        Verdict::Join
    } else if maybe {
        Verdict::Maybe
    } else {
        Verdict::Break
    };
    (verdict, new)
}

fn trim_start(line: &[u8]) -> &[u8] {
    let n = line.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &line[n..]
}

fn trim_end(line: &[u8]) -> &[u8] {
    let n = line.iter().rev().take_while(|&&b| b == b' ' || b == b'\t' || b == b'\r').count();
    &line[..line.len() - n]
}

fn is_traceback(line: &[u8]) -> bool {
    trim_end(line) == b"Traceback (most recent call last):"
}

fn starts_go_dump(line: &[u8]) -> bool {
    line.starts_with(b"panic: ") || line.starts_with(b"fatal error: ") || is_goroutine_header(line)
}

/// `goroutine 1 [running]:` (and newer runtimes' `goroutine 1 gp=… [running]:`).
fn is_goroutine_header(line: &[u8]) -> bool {
    line.strip_prefix(b"goroutine ")
        .is_some_and(|rest| rest.first().is_some_and(u8::is_ascii_digit) && trim_end(rest).ends_with(b":"))
}

/// A line of a goroutine dump that is not indented: a header, a function
/// call (`main.main()`, `main.(*T).run(0xc000010000, ...)`), `created by …`,
/// a signal line, a nested panic.
fn continues_go_dump(line: &[u8]) -> bool {
    if is_goroutine_header(line)
        || line.starts_with(b"created by ")
        || line.starts_with(b"[signal ")
        || line.starts_with(b"panic: ")
        || line.starts_with(b"fatal error: ")
        || line.starts_with(b"...additional frames elided...")
        || line.starts_with(b"runtime stack:")
    {
        return true;
    }
    // A call: a name without spaces, `(`, and a closing `)` at the end.
    let Some(open) = memchr::memchr(b'(', line) else { return false };
    open > 0 && !line[..open].contains(&b' ') && trim_end(line).ends_with(b")")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `text` into groups the way the stage does: a line joins when
    /// the presets say so; `Maybe` lines join only if a later line does.
    fn groups(presets: Presets, text: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut open: Option<(Vec<&str>, usize, PresetState)> = None;
        for line in text.lines() {
            if let Some((lines, committed, state)) = open.as_mut() {
                match next(presets, *state, line.as_bytes()) {
                    (Verdict::Join, s) | (Verdict::JoinLast, s) => {
                        lines.push(line);
                        *committed = lines.len();
                        *state = s;
                        continue;
                    }
                    (Verdict::Maybe, s) => {
                        lines.push(line);
                        *state = s;
                        continue;
                    }
                    (Verdict::Break, _) => {
                        let (lines, committed, _) = open.take().unwrap();
                        out.push(lines[..committed].join("\n"));
                        out.extend(lines[committed..].iter().map(|l| l.to_string()));
                    }
                }
            }
            open = Some((vec![line], 1, begin(presets, line.as_bytes())));
        }
        if let Some((lines, _, _)) = open {
            out.push(lines.join("\n"));
        }
        out
    }

    const JAVA: &str = "java.lang.IllegalStateException: outer
\tat Demo.run(Demo.java:10)
\tat Demo.main(Demo.java:3)
\tSuppressed: java.io.IOException: closing
\t\tat Demo.close(Demo.java:20)
\t\t... 1 more
Caused by: java.lang.IllegalArgumentException: inner
\tat Demo.inner(Demo.java:15)
\t... 2 more";

    const PYTHON: &str = "Traceback (most recent call last):
  File \"/tmp/t.py\", line 3, in inner
    raise KeyError(\"k\")
KeyError: 'k'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"/tmp/t.py\", line 8, in <module>
    outer()
    ~~~~~^^
ValueError: outer";

    const GO: &str = "panic: boom

goroutine 1 [running]:
main.explode(...)
\t/tmp/main.go:8
main.main()
\t/tmp/main.go:20 +0x1d

goroutine 6 [chan receive]:
main.(*worker).run(0xc000010000, {0x4b2e40?, 0x1})
\t/tmp/main.go:14 +0x25
created by main.main in goroutine 1
\t/tmp/main.go:18 +0x45";

    const NODE: &str = "Error: outer
    at wrap (/tmp/t.js:4:11)
    at Object.<anonymous> (/tmp/t.js:9:1) {
  [cause]: Error: inner
      at inner (/tmp/t.js:2:9)
      ... 6 lines matching cause stack trace ...
      at node:internal/main/run_main_module:28:49
}";

    const RUBY: &str = "/tmp/t.rb:6:in 'Object#outer': outer (RuntimeError)
\tfrom /tmp/t.rb:9:in '<main>'
/tmp/t.rb:2:in 'Object#inner': inner (ArgumentError)
\tfrom /tmp/t.rb:5:in 'Object#outer'
\tfrom /tmp/t.rb:9:in '<main>'";

    const DOTNET: &str = "Unhandled exception. System.InvalidOperationException: outer
 ---> System.ArgumentException: inner
   at Program.Inner() in /src/Program.cs:line 10
   --- End of inner exception stack trace ---
   at Program.Main() in /src/Program.cs:line 5";

    fn framed(trace: &str) -> String {
        format!("2024-01-01T00:00:00Z INFO before\n{trace}\n2024-01-01T00:00:01Z INFO after\nplain after")
    }

    fn assert_one_trace(preset: &str, trace: &str) {
        let p = Presets::by_name(preset).unwrap();
        let got = groups(p, &framed(trace));
        assert_eq!(
            got,
            vec![
                "2024-01-01T00:00:00Z INFO before".to_string(),
                trace.to_string(),
                "2024-01-01T00:00:01Z INFO after".to_string(),
                "plain after".to_string()
            ],
            "preset {preset}"
        );
    }

    #[test]
    fn java_trace_with_suppressed_and_cause_is_one_group() {
        assert_one_trace("java", JAVA);
    }

    #[test]
    fn python_chained_traceback_is_one_group() {
        assert_one_trace("python", PYTHON);
    }

    #[test]
    fn go_panic_with_goroutine_dump_is_one_group() {
        assert_one_trace("go", GO);
    }

    #[test]
    fn node_error_with_cause_is_one_group() {
        assert_one_trace("node", NODE);
    }

    #[test]
    fn ruby_trace_with_cause_is_one_group() {
        assert_one_trace("ruby", RUBY);
    }

    #[test]
    fn dotnet_trace_with_inner_exception_is_one_group() {
        assert_one_trace("dotnet", DOTNET);
    }

    #[test]
    fn auto_groups_every_runtime_like_its_own_preset() {
        for trace in [JAVA, PYTHON, GO, NODE, RUBY, DOTNET] {
            assert_one_trace("auto", trace);
        }
    }

    #[test]
    fn blank_line_after_a_go_dump_stays_its_own_event() {
        let got = groups(Presets::GO, "panic: x\n\ngoroutine 1 [running]:\nmain.main()\n\n\nnext line");
        assert_eq!(got, vec!["panic: x\n\ngoroutine 1 [running]:\nmain.main()", "", "", "next line"]);
    }

    #[test]
    fn a_preset_does_not_join_lines_of_another_runtime() {
        // Java alone leaves a Python traceback's lines apart from its final line.
        let got = groups(
            Presets::JAVA,
            "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: v",
        );
        assert_eq!(got.len(), 3);
        // Plain indented text joins no preset.
        let got = groups(Presets::AUTO, "a\n  indented text\nb");
        assert_eq!(got, vec!["a", "  indented text", "b"]);
    }

    #[test]
    fn unknown_preset_name_is_none() {
        assert!(Presets::by_name("cobol").is_none());
        for n in PRESET_NAMES {
            assert!(Presets::by_name(n).is_some());
        }
    }
}
