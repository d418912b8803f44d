//! Webhook URL validation against server-side request forgery (PROTOCOL.md sections 6.2 and
//! 12.8).
//!
//! A webhook URL must be `https://` and name a host whose addresses are all public. The one
//! exception, when development webhooks are allowed, is a host spelled exactly `localhost` or
//! `127.0.0.x` (dotted decimal): those may use `http://` and reach loopback.
//!
//! Hosts are interpreted the way browsers and most HTTP clients do (the WHATWG URL host parser),
//! so `2130706433`, `0177.0.0.1`, `0x7f.1` and `[::ffff:127.0.0.1]` are all recognised as the
//! loopback address they are. Names are checked when the subscription is created and their
//! resolved addresses again right before every connection ([`allowed_addrs`]), so a DNS answer
//! that changes to a private address (DNS rebinding) is refused at connect time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A webhook URL that passed [`parse_webhook_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The URL as given.
    pub raw: String,
    /// `true` for `https`.
    pub https: bool,
    /// The host: a lowercase name without a trailing dot, or an address.
    pub host: Host,
    /// The port (default 443 / 80).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path_and_query: String,
    /// The `Host` header value (the authority as given, lowercased).
    pub authority: String,
    /// The development exception applies: the host is spelled `localhost` or `127.0.0.x` and
    /// development webhooks are allowed.
    pub dev_loopback: bool,
}

/// A URL host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name.
    Name(String),
    /// An IP address (any textual form).
    Ip(IpAddr),
}

/// Why a webhook URL was rejected (`400 WEBHOOK_URL_REJECTED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

fn reject(msg: impl Into<String>) -> Rejected {
    Rejected(msg.into())
}

/// Longest accepted webhook URL.
pub const MAX_URL_LEN: usize = 2048;

/// Parses and checks a webhook URL without DNS (literal addresses and well-known local names).
pub fn parse_webhook_url(raw: &str, allow_dev: bool) -> Result<WebhookUrl, Rejected> {
    if raw.len() > MAX_URL_LEN {
        return Err(reject("webhook.url is too long"));
    }
    if raw
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\' || c == '#')
    {
        return Err(reject(
            "webhook.url must not contain whitespace, backslashes or a fragment",
        ));
    }
    let uri: http::Uri = raw
        .parse()
        .map_err(|_| reject("webhook.url must be an absolute URL"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| reject("webhook.url must be an absolute URL"))?
        .to_ascii_lowercase();
    let authority = uri
        .authority()
        .ok_or_else(|| reject("webhook.url must have a host"))?;
    if authority.as_str().contains('@') {
        return Err(reject("webhook.url must not contain credentials"));
    }
    let host_text = authority.host().to_ascii_lowercase();
    let host_text = host_text.strip_suffix('.').unwrap_or(&host_text).to_owned();
    if host_text.is_empty() {
        return Err(reject("webhook.url must have a host"));
    }
    let https = match scheme.as_str() {
        "https" => true,
        "http" => false,
        _ => return Err(reject("webhook.url must use https")),
    };
    let host = parse_host(&host_text)?;
    let dev_loopback = allow_dev && is_dev_host(&host_text);
    if !https && !dev_loopback {
        return Err(reject(if allow_dev {
            "webhook.url must use https (http is allowed only for localhost and 127.0.0.x)"
        } else {
            "webhook.url must use https"
        }));
    }
    if !dev_loopback {
        match &host {
            Host::Ip(ip) => {
                if let Some(why) = forbidden_ip(*ip) {
                    return Err(reject(format!("webhook.url targets a {why} address")));
                }
            }
            Host::Name(name) => {
                if let Some(why) = forbidden_name(name) {
                    return Err(reject(format!("webhook.url targets a {why} host")));
                }
            }
        }
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let path_and_query = if path_and_query.is_empty() {
        "/".to_owned()
    } else {
        path_and_query
    };
    Ok(WebhookUrl {
        raw: raw.to_owned(),
        https,
        host,
        port,
        path_and_query,
        authority: authority.as_str().to_ascii_lowercase(),
        dev_loopback,
    })
}

/// The development exception: a host spelled `localhost` or `127.0.0.x` in dotted decimal.
fn is_dev_host(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    // std's parser accepts only canonical dotted decimal (no octal, hex or short forms).
    host.parse::<Ipv4Addr>()
        .is_ok_and(|ip| ip.octets()[..3] == [127, 0, 0])
}

fn parse_host(host: &str) -> Result<Host, Rejected> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| reject("webhook.url has a malformed IPv6 host"))?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| reject("webhook.url has a malformed IPv6 host"));
    }
    if ends_in_number(host) {
        return parse_ipv4_whatwg(host)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .ok_or_else(|| reject("webhook.url has a malformed IPv4 host"));
    }
    Ok(Host::Name(host.to_owned()))
}

/// WHATWG "ends in a number": the last label is all decimal digits or `0x` + hex digits.
fn ends_in_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x")
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The WHATWG IPv4 parser: 1 to 4 parts, each decimal, octal (leading `0`) or hex (`0x`); the
/// last part fills the remaining bytes.
fn parse_ipv4_whatwg(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        numbers.push(parse_ipv4_number(part)?);
    }
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|&n| n > 255) {
        return None;
    }
    let width = 5 - u32::try_from(numbers.len()).ok()?;
    if *last >= 256_u64.pow(width) {
        return None;
    }
    let mut value = *last;
    for (i, &n) in init.iter().enumerate() {
        value += n << (8 * (3 - i));
    }
    Some(Ipv4Addr::from(u32::try_from(value).ok()?))
}

fn parse_ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        return Some(0);
    }
    if digits.len() > 32 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Names that always mean a local target.
fn forbidden_name(name: &str) -> Option<&'static str> {
    let local_suffixes = [
        ".localhost",
        ".local",
        ".internal",
        ".localdomain",
        ".home.arpa",
    ];
    if name == "localhost" || local_suffixes.iter().any(|s| name.ends_with(s)) {
        return Some("local");
    }
    None
}

/// Why an address may not be a webhook target, or `None` when it is public.
#[must_use]
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

// reason: one arm per registry entry keeps the table reviewable against the IANA list.
#[allow(clippy::match_same_arms)]
fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let why = match o {
        [0, ..] => "unspecified (0.0.0.0/8)",
        [10, ..] => "private (RFC 1918)",
        [100, b, ..] if (64..128).contains(&b) => "shared (RFC 6598)",
        [127, ..] => "loopback",
        [169, 254, ..] => "link-local or cloud metadata",
        [172, b, ..] if (16..32).contains(&b) => "private (RFC 1918)",
        [192, 0, 0, _] => "IETF protocol assignment",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [192, 88, 99, _] => "6to4 relay",
        [192, 168, ..] => "private (RFC 1918)",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking",
        [a, ..] if a >= 224 => "multicast or reserved",
        _ => return None,
    };
    Some(why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Addresses that embed an IPv4 address are judged by it: mapped (::ffff:0:0/96),
    // compatible (::/96), NAT64 (64:ff9b::/96 and 64:ff9b:1::/48) and 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4).or(Some("IPv4-mapped"));
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if seg[..6] == [0, 0, 0, 0, 0, 0] {
        return Some("IPv4-compatible");
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded(seg[6], seg[7])).or(Some("NAT64"));
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        return Some("NAT64 (local-use)");
    }
    if seg[0] == 0x2002 {
        return forbidden_v4(embedded(seg[1], seg[2])).map(|_| "6to4 with a local IPv4");
    }
    let why = match seg[0] {
        s if s & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        s if s & 0xffc0 == 0xfe80 => "link-local",
        s if s & 0xffc0 == 0xfec0 => "site-local",
        s if s & 0xff00 == 0xff00 => "multicast",
        0x2001 if seg[1] == 0x0db8 => "documentation",
        0x2001 if seg[1] < 0x0200 => "IETF protocol assignment",
        0x0100 if seg[1..4] == [0, 0, 0] => "discard",
        _ => return None,
    };
    Some(why)
}

/// Filters resolved addresses to those a delivery may connect to. Under the development
/// exception loopback addresses are allowed too (a `localhost` name may resolve to `::1`).
#[must_use]
pub fn allowed_addrs(url: &WebhookUrl, resolved: &[SocketAddr]) -> Vec<SocketAddr> {
    resolved
        .iter()
        .copied()
        .filter(|addr| {
            let ip = canonical(addr.ip());
            forbidden_ip(ip).is_none() || (url.dev_loopback && ip.is_loopback())
        })
        .collect()
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// Resolves the URL's host (a literal address needs no lookup).
pub async fn resolve(url: &WebhookUrl) -> std::io::Result<Vec<SocketAddr>> {
    match &url.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, url.port)]),
        Host::Name(name) => Ok(tokio::net::lookup_host((name.as_str(), url.port))
            .await?
            .collect()),
    }
}

/// The creation-time check of a named host: resolves it (bounded by `timeout`) and rejects the
/// URL when any address is forbidden. A failed or slow lookup passes: delivery checks again.
pub async fn check_resolved(
    url: &WebhookUrl,
    timeout: std::time::Duration,
) -> Result<(), Rejected> {
    if url.dev_loopback || matches!(url.host, Host::Ip(_)) {
        return Ok(());
    }
    let Ok(Ok(addrs)) = tokio::time::timeout(timeout, resolve(url)).await else {
        return Ok(());
    };
    for addr in &addrs {
        if let Some(why) = forbidden_ip(canonical(addr.ip())) {
            return Err(reject(format!(
                "webhook.url host resolves to a {why} address"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(url: &str, dev: bool) -> bool {
        parse_webhook_url(url, dev).is_err()
    }

    #[test]
    fn https_public_hosts_are_accepted() {
        for url in [
            "https://worker.example/hooks",
            "https://worker.example:8443/a?b=c",
            "https://93.184.216.34/x",
            "https://[2606:4700::1111]/x",
            "HTTPS://Worker.Example./x",
        ] {
            let parsed = parse_webhook_url(url, false).expect(url);
            assert!(parsed.https);
        }
        let u = parse_webhook_url("https://worker.example", false).expect("valid");
        assert_eq!(u.path_and_query, "/");
        assert_eq!(u.port, 443);
    }

    #[test]
    fn plain_http_is_rejected_without_the_dev_exception() {
        assert!(rejected("http://worker.example/x", false));
        assert!(rejected("http://worker.example/x", true));
        assert!(rejected("http://localhost:8080/x", false));
        assert!(rejected("http://127.0.0.1:8080/x", false));
        assert!(rejected("ftp://worker.example/x", false));
        assert!(rejected("/relative", false));
        assert!(rejected("https://user:pw@worker.example/", false));
        assert!(rejected("https://worker.example/#frag", false));
    }

    #[test]
    fn dev_exception_covers_exactly_localhost_and_127_0_0_x() {
        for url in [
            "http://localhost:3000/w",
            "http://127.0.0.1:9/w",
            "http://127.0.0.254/",
        ] {
            let u = parse_webhook_url(url, true).expect(url);
            assert!(u.dev_loopback, "{url}");
        }
        for url in [
            "http://127.0.1.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f000001/",
            "http://[::1]/",
            "http://10.0.0.1/hook",
            "http://foo.localhost/",
        ] {
            assert!(rejected(url, true), "{url}");
        }
    }

    #[test]
    fn private_and_local_ipv4_in_every_spelling_is_rejected() {
        for url in [
            "https://10.0.0.1/",
            "https://172.16.0.1/",
            "https://172.31.255.255/",
            "https://192.168.1.1/",
            "https://127.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://224.0.0.1/",
            "https://255.255.255.255/",
            // Decimal, octal, hex and short forms.
            "https://2130706433/",
            "https://167772161/",
            "https://0177.0.0.1/",
            "https://012.0.0.1/",
            "https://0x7f.0.0.1/",
            "https://0x7f000001/",
            "https://0xa9.0xfe.0xa9.0xfe/",
            "https://127.1/",
            "https://10.1/",
            "https://192.168.257/",
            // Malformed numeric hosts are not names.
            "https://1.2.3.4.5/",
            "https://256.0.0.1/",
            "https://09.0.0.1/",
        ] {
            assert!(rejected(url, false), "{url}");
            // The development exception covers 127.0.0.x spelled in dotted decimal only.
            if url != "https://127.0.0.1/" {
                assert!(rejected(url, true), "{url}");
            }
        }
        assert!(!rejected("https://172.32.0.1/", false));
        assert!(!rejected("https://8.8.8.8/", false));
    }

    #[test]
    fn local_ipv6_is_rejected() {
        for url in [
            "https://[::1]/",
            "https://[::]/",
            "https://[fe80::1]/",
            "https://[fc00::1]/",
            "https://[fd00:ec2::254]/",
            "https://[::ffff:10.0.0.1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:7f00:1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[64:ff9b::a00:1]/",
            "https://[2002:c0a8:101::1]/",
            "https://[::127.0.0.1]/",
            "https://[ff02::1]/",
            "https://[2001:db8::1]/",
            "https://[fe80::1%25eth0]/",
        ] {
            assert!(rejected(url, false), "{url}");
        }
        assert!(!rejected("https://[2606:4700:4700::1111]/", false));
    }

    #[test]
    fn local_names_are_rejected() {
        for url in [
            "https://localhost/",
            "https://LOCALHOST./",
            "https://api.localhost/",
            "https://printer.local/",
            "https://metadata.google.internal/",
        ] {
            assert!(rejected(url, false), "{url}");
        }
    }

    #[test]
    fn connect_time_filter_drops_private_answers() {
        let url = parse_webhook_url("https://rebind.example/x", false).expect("valid");
        let addrs: Vec<SocketAddr> = [
            "10.0.0.1:443",
            "[::ffff:192.168.0.1]:443",
            "127.0.0.1:443",
            "[::1]:443",
            "93.184.216.34:443",
        ]
        .iter()
        .map(|a| a.parse().expect("addr"))
        .collect();
        assert_eq!(allowed_addrs(&url, &addrs), vec![addrs[4]]);
        assert!(allowed_addrs(&url, &addrs[..4]).is_empty());

        let dev = parse_webhook_url("http://localhost:9/x", true).expect("valid");
        let local: Vec<SocketAddr> = ["127.0.0.1:9", "[::1]:9", "10.0.0.1:9"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        assert_eq!(allowed_addrs(&dev, &local), local[..2].to_vec());
    }

    #[test]
    fn whatwg_ipv4_parser_table() {
        let cases = [
            ("1.2.3.4", Some([1, 2, 3, 4])),
            ("0x7f.1", Some([127, 0, 0, 1])),
            ("0177.0.0.1", Some([127, 0, 0, 1])),
            ("2130706433", Some([127, 0, 0, 1])),
            ("1.2.3.4.", Some([1, 2, 3, 4])),
            ("1.256", Some([1, 0, 1, 0])),
            ("0x", Some([0, 0, 0, 0])),
            ("4294967296", None),
            ("1.2.3.256", None),
            ("08", None),
        ];
        for (host, want) in cases {
            assert_eq!(parse_ipv4_whatwg(host), want.map(Ipv4Addr::from), "{host}");
        }
    }
}
