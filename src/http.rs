//! JSON over HTTP with retries: what the rollout engine's client and the HTTP reward client share.

use serde_json::Value as Json;
use std::time::Duration;

/// An agent whose requests give up after `timeout_s` (connecting: at most 10 s), keeping up to
/// `connections` idle connections per host.
pub fn agent(timeout_s: f64, connections: usize) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs_f64(timeout_s.min(10.0)))
        .timeout(Duration::from_secs_f64(timeout_s))
        .max_idle_connections_per_host(connections)
        .build()
}

/// A GET (no body) or a POST of `body` to `url`, tried again after a failure to connect or a 5xx
/// answer, at most `retries` more times, waiting 250 ms and then twice as long each time. The
/// error says what went wrong, for the caller to name its URL.
pub fn request(
    agent: &ureq::Agent,
    url: &str,
    body: Option<&Json>,
    bearer: Option<&str>,
    retries: usize,
) -> Result<Json, String> {
    let mut wait = Duration::from_millis(250);
    for attempt in 0..=retries {
        let mut request = match body {
            Some(_) => agent.post(url),
            None => agent.get(url),
        };
        if let Some(key) = bearer {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let result = match body {
            Some(b) => request.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => request.call(),
        };
        let tries = attempt + 1;
        match result {
            Ok(response) => {
                let text = response.into_string().map_err(|e| e.to_string())?;
                return serde_json::from_str(&text).map_err(|e| format!("answered with invalid JSON ({e})"));
            }
            Err(ureq::Error::Status(code, response)) => {
                let text = response.into_string().unwrap_or_default();
                if code < 500 || attempt == retries {
                    let text = text.chars().take(500).collect::<String>();
                    return Err(format!("answered {code} ({tries} tries): {text}"));
                }
            }
            Err(ureq::Error::Transport(t)) if attempt == retries => {
                return Err(format!("{t} ({tries} tries; is the server running at this address?)"));
            }
            Err(ureq::Error::Transport(_)) => {}
        }
        std::thread::sleep(wait);
        wait *= 2;
    }
    unreachable!("the last attempt returns")
}
