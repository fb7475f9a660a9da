//! `${name}` substitution in recipe strings; `$$` stands for a literal `$`.

use std::collections::BTreeMap;

/// Substitute every `${name}` in `text`; the error is the first undefined name.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!("unclosed `${{` in `{text}`"));
            };
            let name = &body[..end];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => return Err(name.to_string()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_escapes() {
        let vars = BTreeMap::from([("suite".to_string(), "bookworm".to_string())]);
        assert_eq!(substitute("${suite}-x", &vars).unwrap(), "bookworm-x");
        assert_eq!(substitute("$${suite} $HOME", &vars).unwrap(), "${suite} $HOME");
        assert_eq!(substitute("${nope}", &vars).unwrap_err(), "nope");
    }
}
