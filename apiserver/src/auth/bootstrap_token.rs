//! Bootstrap tokens (kube-apiserver's `--enable-bootstrap-token-auth`): `ID.SECRET` (6 and 16
//! of `[a-z0-9]`) matching a Secret `kube-system/bootstrap-token-ID` of type
//! `bootstrap.kubernetes.io/token` with `usage-bootstrap-authentication: "true"`, not expired.
//! The user is `system:bootstrap:ID` in `system:bootstrappers` and the Secret's
//! `auth-extra-groups` (each `system:bootstrappers:...`). `capstan token create` makes them;
//! a joining agent uses one to ask for its certificate.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

use super::UserInfo;
use super::service_account::Objects;

/// The group every bootstrap token user is in.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

/// `ID.SECRET` split, when `token` has the form.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn field(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// Equal without leaking where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The user of a bootstrap token. `Ok(None)`: not of the form (not this authenticator's);
/// `Err(why)`: of the form but not valid (a 401; `why` is logged).
pub async fn authenticate(
    objects: &impl Objects,
    token: &str,
    now: i64,
) -> Result<Option<UserInfo>, String> {
    let Some((id, secret)) = split(token) else {
        return Ok(None);
    };
    let name = format!("bootstrap-token-{id}");
    let s = objects
        .object(("", "v1", "secrets"), Some("kube-system"), &name)
        .await
        .ok_or_else(|| format!("no secret kube-system/{name}"))?;
    if s["type"] != SECRET_TYPE {
        return Err(format!("kube-system/{name} is not of type {SECRET_TYPE}"));
    }
    if s["metadata"]["deletionTimestamp"].is_string() {
        return Err(format!("kube-system/{name} is being deleted"));
    }
    if field(&s, "token-id").as_deref() != Some(id)
        || !field(&s, "token-secret").is_some_and(|t| same(&t, secret))
    {
        return Err("the token does not match its secret".into());
    }
    if field(&s, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err("the token is not for authentication".into());
    }
    if let Some(exp) = field(&s, "expiration") {
        let at = exp
            .parse::<jiff::Timestamp>()
            .map_err(|_| format!("kube-system/{name}: expiration {exp:?} is not RFC 3339"))?;
        if now >= at.as_second() {
            return Err(format!("the token expired at {exp}"));
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    for g in field(&s, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        if !g.starts_with("system:bootstrappers:") {
            return Err(format!("extra group {g:?} is not system:bootstrappers:*"));
        }
        groups.push(g.to_string());
    }
    let mut user = UserInfo::authenticated(&format!("system:bootstrap:{id}"), "", &groups);
    user.extra = BTreeMap::new();
    Ok(Some(user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct One(Value);
    impl Objects for One {
        async fn object(
            &self,
            _: (&'static str, &'static str, &'static str),
            ns: Option<&str>,
            name: &str,
        ) -> Option<Value> {
            (ns == Some("kube-system") && self.0["metadata"]["name"] == name)
                .then(|| self.0.clone())
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn secret(extra: &[(&str, &str)]) -> Value {
        let mut data = json!({"token-id": b64("abcdef"), "token-secret": b64("0123456789abcdef"),
            "usage-bootstrap-authentication": b64("true")});
        for (k, v) in extra {
            data[*k] = json!(b64(v));
        }
        json!({"metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
               "type": SECRET_TYPE, "data": data})
    }

    const NOW: i64 = 1_800_000_000;

    #[tokio::test]
    async fn a_token_is_its_secrets_until_it_expires() {
        let good = "abcdef.0123456789abcdef";
        let u = authenticate(
            &One(secret(&[(
                "auth-extra-groups",
                "system:bootstrappers:capstan:default-node-token",
            )])),
            good,
            NOW,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(u.username, "system:bootstrap:abcdef");
        assert_eq!(
            u.groups,
            [
                "system:bootstrappers",
                "system:bootstrappers:capstan:default-node-token",
                "system:authenticated"
            ]
        );
        // Other forms are another authenticator's.
        for other in [
            "abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde",
            "a.b.c",
        ] {
            assert_eq!(
                authenticate(&One(secret(&[])), other, NOW).await,
                Ok(None),
                "{other}"
            );
        }
        // A wrong secret, an expired token, a token not for authentication, a bad group, a
        // secret of another type: refused.
        assert!(
            authenticate(&One(secret(&[])), "abcdef.0123456789abcdee", NOW)
                .await
                .is_err()
        );
        let expiry = jiff::Timestamp::from_second(NOW).unwrap().to_string();
        assert!(
            authenticate(&One(secret(&[("expiration", &expiry)])), good, NOW)
                .await
                .is_err()
        );
        assert!(
            authenticate(&One(secret(&[("expiration", &expiry)])), good, NOW - 1)
                .await
                .is_ok()
        );
        assert!(
            authenticate(
                &One(secret(&[("usage-bootstrap-authentication", "false")])),
                good,
                NOW
            )
            .await
            .is_err()
        );
        assert!(
            authenticate(
                &One(secret(&[("auth-extra-groups", "system:masters")])),
                good,
                NOW
            )
            .await
            .is_err()
        );
        let mut opaque = secret(&[]);
        opaque["type"] = json!("Opaque");
        assert!(authenticate(&One(opaque), good, NOW).await.is_err());
    }
}
