//! The loopback guard: network load is only ever aimed at this machine, so every target URL is
//! checked before the first byte is sent.

use std::net::IpAddr;

use anyhow::{Context, bail};
use reqwest::Url;

/// Parses `raw` and returns it only when its scheme is one of `schemes` and its host is
/// `localhost`, an address in 127.0.0.0/8 or `::1`.
pub fn parse_loopback_url(raw: &str, schemes: &[&str]) -> anyhow::Result<Url> {
    let url = Url::parse(raw).with_context(|| format!("invalid url {raw:?}"))?;
    if !schemes.contains(&url.scheme()) {
        bail!("url {raw:?} must use one of the schemes {schemes:?}");
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    if !loopback {
        bail!(
            "refusing non-loopback target {raw:?}: load is only sent to 127.0.0.0/8, ::1 or localhost"
        );
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP: &[&str] = &["http", "https"];

    #[test]
    fn loopback_hosts_are_accepted() {
        for ok in [
            "http://127.0.0.1:4320/v1/opamp",
            "http://127.9.8.7/",
            "http://localhost:9200",
            "http://LOCALHOST:9200",
            "http://[::1]:4320/v1/opamp",
        ] {
            assert!(parse_loopback_url(ok, HTTP).is_ok(), "{ok}");
        }
    }

    #[test]
    fn other_hosts_are_refused() {
        for bad in [
            "http://10.0.0.1:4320/v1/opamp",
            "http://0.0.0.0:4320/",
            "http://example.com/",
            "http://localhost.example.com/",
            "http://[::2]/",
            "http://128.0.0.1/",
            "not a url",
        ] {
            assert!(parse_loopback_url(bad, HTTP).is_err(), "{bad}");
        }
    }

    #[test]
    fn wrong_scheme_is_refused() {
        assert!(parse_loopback_url("ftp://127.0.0.1/", HTTP).is_err());
        assert!(parse_loopback_url("ws://127.0.0.1/", &["ws"]).is_ok());
    }
}
