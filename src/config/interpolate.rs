//! `${VAR}`, `${VAR:-default}` and `${VAR:?message}` in config text, from
//! the environment. `$$` is a literal `$`. Comment lines are left alone so a
//! commented-out `${VAR:?…}` never fails a config.

use super::ConfigError;

/// Replaces every reference in `text` using `lookup`. Returns the new text
/// or every error found, each naming its line.
pub(crate) fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let Some(close) = body.find('}') else {
                    errors.push(ConfigError::new(format!("line {}", n + 1), "unclosed `${` in config"));
                    out.push_str(&rest[pos..]);
                    rest = "";
                    break;
                };
                match expand(&body[..close], lookup) {
                    Ok(v) => out.push_str(&v),
                    Err(msg) => errors.push(ConfigError::new(format!("line {}", n + 1), msg)),
                }
                rest = &body[close + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn expand(expr: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, op) = match expr.find(':') {
        Some(i) => (&expr[..i], Some(&expr[i + 1..])),
        None => (expr, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("invalid variable name in `${{{expr}}}`"));
    }
    let value = lookup(name).filter(|v| !v.is_empty());
    match op {
        None => Ok(value.unwrap_or_default()),
        Some(d) if d.starts_with('-') => Ok(value.unwrap_or_else(|| d[1..].to_owned())),
        Some(m) if m.starts_with('?') => value.ok_or_else(|| {
            let msg = m[1..].trim();
            if msg.is_empty() {
                format!("environment variable {name} is required")
            } else {
                format!("environment variable {name} is required: {msg}")
            }
        }),
        Some(_) => Err(format!("unsupported operator in `${{{expr}}}`: use :- or :?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_plain_default_and_required() {
        let got = interpolate("x = \"${A}-${B:-bee}-${EMPTY:-e}-$$-$5\"\n", &env).unwrap();
        assert_eq!(got, "x = \"alpha-bee-e-$-$5\"\n");
    }

    #[test]
    fn reports_every_missing_required_variable_with_its_line() {
        let errs = interpolate("a = \"${X:?set X}\"\n# ${Y:?ignored}\nb = \"${Z:?}\"\n", &env).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].to_string(), "line 1: environment variable X is required: set X");
        assert_eq!(errs[1].to_string(), "line 3: environment variable Z is required");
    }
}
