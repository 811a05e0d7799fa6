//! The static token file (`--token-auth-file`), in kube-apiserver's format: one CSV line per
//! token, `token,user,uid[,"group1,group2"]`. Read at start; a malformed line stops the server
//! with its line number.

use std::collections::HashMap;
use std::sync::Arc;

use super::UserInfo;

/// Tokens and the users they stand for.
#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    users: Arc<HashMap<String, Arc<UserInfo>>>,
}

impl TokenFile {
    /// Reads and parses `path`.
    pub fn read(path: &std::path::Path) -> Result<TokenFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the token file {}: {e}", path.display()))?;
        TokenFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<TokenFile, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let fields = csv_fields(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            if fields.len() < 3 {
                return Err(format!(
                    "line {}: want token,user,uid[,\"groups\"], got {} fields",
                    i + 1,
                    fields.len()
                ));
            }
            let (token, user, uid) = (&fields[0], &fields[1], &fields[2]);
            if token.is_empty() || user.is_empty() {
                return Err(format!(
                    "line {}: the token and the user must not be empty",
                    i + 1
                ));
            }
            let groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            if users
                .insert(
                    token.clone(),
                    Arc::new(UserInfo::authenticated(user, uid, &groups)),
                )
                .is_some()
            {
                return Err(format!("line {}: duplicate token", i + 1));
            }
        }
        Ok(TokenFile {
            users: Arc::new(users),
        })
    }

    /// The user `token` stands for.
    pub fn user(&self, token: &str) -> Option<Arc<UserInfo>> {
        self.users.get(token).cloned()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The fields of one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote inside quotes).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("an unterminated quoted field".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(c) => return Err(format!("{c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_string());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field.trim().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_as_kube_apiserver_reads_them() {
        let f = TokenFile::parse("abc,jane,1,\"a,b\"\n\nxyz,bob,2\n").unwrap();
        assert_eq!(f.len(), 2);
        let jane = f.user("abc").unwrap();
        assert_eq!(jane.username, "jane");
        assert_eq!(jane.groups, vec!["a", "b", "system:authenticated"]);
        assert_eq!(f.user("xyz").unwrap().groups, vec!["system:authenticated"]);
        assert!(f.user("nope").is_none());
        assert_eq!(
            csv_fields("a,\"b\"\"c\",d").unwrap(),
            vec!["a", "b\"c", "d"]
        );
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for (text, want) in [
            ("abc,jane", "line 1: want token"),
            ("ok,u,1\nabc,\"jane", "line 2: an unterminated"),
            ("a,u,1\na,v,2", "line 2: duplicate token"),
            (",u,1", "line 1: the token"),
            ("a,\"u\"x,1", "line 1: 'x' after"),
        ] {
            let e = TokenFile::parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }
}
