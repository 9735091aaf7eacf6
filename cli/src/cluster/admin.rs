//! `convoy whoami` and `convoy admin token create|list|revoke`: people's API tokens.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use convoy_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cluster::{ago, connect, rpc};
use crate::display::{say, say_err};

pub async fn whoami(coordinator: &str, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let me = c
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        say!(
            "{}",
            json!({"user": me.user, "admin": me.admin, "token_id": me.token_id, "insecure": me.insecure})
        );
    } else if me.insecure {
        say!("anyone: the coordinator runs without authentication (--insecure)");
    } else {
        say!(
            "{}{}{}",
            me.user,
            if me.admin { " (administrator)" } else { "" },
            if me.token_id.is_empty() {
                " with the bootstrap token".to_string()
            } else {
                format!(" with token {}", me.token_id)
            }
        );
    }
    Ok(())
}

/// A duration like `90d`, `12h`, `30m` or `45s`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("{text:?}: a number then s, m, h or d (e.g. 90d)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("{text:?}: a number then s, m, h or d (e.g. 90d)"),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .with_context(|| format!("{text:?} is too long"))
}

fn info_json(t: &pb::TokenInfo) -> Value {
    json!({
        "id": t.id, "user": t.user, "admin": t.admin,
        "created_at_ms": t.created_at_ms,
        "expires_at_ms": (t.expires_at_ms > 0).then_some(t.expires_at_ms),
    })
}

pub async fn create(
    coordinator: &str,
    user: &str,
    admin: bool,
    expires: Option<&str>,
    json_out: bool,
) -> Result<()> {
    let expires_in_ms = match expires {
        Some(e) => parse_duration(e)?.as_millis() as u64,
        None => 0,
    };
    let mut c = connect(coordinator).await?;
    let r = c
        .create_token(pb::CreateTokenRequest {
            user: user.to_string(),
            admin,
            expires_in_ms,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let info = r.info.unwrap_or_default();
    if json_out {
        let mut v = info_json(&info);
        v["token"] = Value::String(r.token);
        say!("{v}");
        return Ok(());
    }
    // The token alone on stdout (for `> file`); what it is on stderr.
    say_err!(
        "token {} for {}{}{}; it is shown this once (keep it in a file of mode 0600 and point \
         CONVOY_TOKEN_FILE at it)",
        info.id,
        info.user,
        if info.admin { " (administrator)" } else { "" },
        expires.map_or(String::new(), |e| format!(", expires in {e}"))
    );
    say!("{}", r.token);
    Ok(())
}

pub async fn list(coordinator: &str, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let tokens = c
        .list_tokens(pb::ListTokensRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .tokens;
    if json_out {
        say!("{}", Value::Array(tokens.iter().map(info_json).collect()));
        return Ok(());
    }
    say!(
        "{:<14} {:<20} {:<6} {:<10}  EXPIRES",
        "ID",
        "USER",
        "ADMIN",
        "CREATED"
    );
    for t in &tokens {
        say!(
            "{:<14} {:<20} {:<6} {:<10}  {}",
            t.id,
            t.user,
            if t.admin { "yes" } else { "no" },
            ago(t.created_at_ms),
            expiry(t.expires_at_ms)
        );
    }
    Ok(())
}

fn expiry(at_ms: u64) -> String {
    if at_ms == 0 {
        return "never".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if at_ms <= now {
        return "expired".into();
    }
    let s = (at_ms - now) / 1000;
    match s {
        0..3600 => format!("in {}m", s / 60),
        3600..86400 => format!("in {}h", s / 3600),
        _ => format!("in {}d", s / 86400),
    }
}

pub async fn revoke(coordinator: &str, id: &str, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let t = c
        .revoke_token(pb::RevokeTokenRequest { id: id.to_string() })
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        say!("{}", info_json(&t));
    } else {
        say!("revoked token {} of {}", t.id, t.user);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_and_refuse_anything_else() {
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        for bad in ["", "d", "10", "10w", "-1d", "99999999999999999999d"] {
            let msg = format!("{:#}", parse_duration(bad).expect_err(bad));
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
    }
}
