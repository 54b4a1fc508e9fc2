//! Downloading an image fal linked to, when the client needs it inline
//! (`b64_json`, streams) and fal sent a link anyway. The link comes from an
//! upstream answer, so it is not trusted (SSRF guard):
//!
//! - only `http(s)` links without credentials, to a host on
//!   `fal.download_hosts` (each entry matches itself and its subdomains);
//! - never to a loopback, private, link-local or otherwise non-public
//!   address, checked on the addresses DNS returns (the connection goes to
//!   those checked addresses only, so a name cannot be re-pointed between
//!   check and connect), unless `fal.download_private_networks` is on;
//! - no redirects, no proxy (the address check must see the real peer);
//! - what arrives must be an image of the format the job asked for.
//!
//! The requests never carry the fal key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::HeaderMap;

use super::transport::ClientPerThread;
use crate::config::FalSettings;
use crate::domain::OutputFormat;

/// Where the gateway may fetch images from, and the clients that do it.
pub struct Downloads {
    http: ClientPerThread,
    hosts: Vec<String>,
    private_networks: bool,
}

impl Downloads {
    pub fn new(settings: &FalSettings) -> Result<Self, String> {
        let private_networks = settings.download_private_networks;
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let http = ClientPerThread::new(move || {
            reqwest::Client::builder()
                .user_agent(concat!("image-gateway/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(connect_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(Arc::new(PublicOnly { private_networks }))
                .build()
        })
        .map_err(|e| format!("cannot build the download client: {e}"))?;
        Ok(Self {
            http,
            hosts: settings
                .download_hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            private_networks,
        })
    }

    /// The link, if the gateway may fetch it; else why not (no part of the
    /// link is echoed: it came from upstream).
    pub fn check(&self, link: &str) -> Result<Url, &'static str> {
        let url = Url::parse(link).map_err(|_| "an image link that does not parse")?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("an image link that is not http(s)");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("an image link carrying credentials");
        }
        let allowed = |host: &str| {
            self.hosts.iter().any(|h| {
                host == h
                    || host
                        .strip_suffix(h.as_str())
                        .is_some_and(|s| s.ends_with('.'))
            })
        };
        let host = url.host_str().ok_or("an image link without a host")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => self.check_ip(ip, allowed(&ip.to_string()))?,
            Err(_) => {
                if !allowed(&host.trim_end_matches('.').to_ascii_lowercase()) {
                    return Err("an image link to a host not in fal.download_hosts");
                }
            }
        }
        Ok(url)
    }

    /// An address written in the link itself (no DNS to check it in).
    fn check_ip(&self, ip: IpAddr, listed: bool) -> Result<(), &'static str> {
        if !listed {
            return Err("an image link to a host not in fal.download_hosts");
        }
        if !self.private_networks && !is_public(ip) {
            return Err("an image link to a non-public address");
        }
        Ok(())
    }

    /// The GET for a checked link.
    pub fn get(&self, url: &Url) -> reqwest::RequestBuilder {
        self.http.get().get(url.clone()).header("accept", "image/*")
    }
}

/// Whether downloaded bytes are an image of the format the job asked for,
/// and the answer's `Content-Type` (when sent) does not say otherwise.
pub fn check_image(
    bytes: &[u8],
    headers: &HeaderMap,
    expected: OutputFormat,
) -> Result<(), &'static str> {
    if let Some(ct) = headers.get(reqwest::header::CONTENT_TYPE) {
        let essence = ct
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let image_type = match essence.as_str() {
            // Object stores often label every file this way.
            "application/octet-stream" | "binary/octet-stream" => None,
            "image/jpg" | "image/pjpeg" => Some(OutputFormat::Jpeg),
            other => match OutputFormat::ALL
                .into_iter()
                .find(|f| f.content_type() == other)
            {
                Some(f) => Some(f),
                None => return Err("a download that is not an image (by its Content-Type)"),
            },
        };
        if image_type.is_some_and(|f| f != expected) {
            return Err("a download of another image format than the one asked for");
        }
    }
    match OutputFormat::sniff(bytes) {
        Some(f) if f == expected => Ok(()),
        Some(_) => Err("a download of another image format than the one asked for"),
        None => Err("a download that is not an image"),
    }
}

/// Whether `ip` is a public unicast address: not loopback, private,
/// link-local, shared (CGNAT), unspecified, broadcast, multicast,
/// documentation, benchmarking or reserved, nor an IPv6 form of one.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network"
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local: cloud metadata lives here
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated), NAT64 (64:ff9b::/96) and
    // 6to4 (2002::/16) addresses reach an IPv4 address: judge that one.
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return is_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x200) // Teredo and IETF protocol assignments
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only
}

/// DNS for downloads: the system resolver, then every non-public address
/// dropped (unless allowed), so the connection can only go to a public one.
struct PublicOnly {
    private_networks: bool,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let private_networks = self.private_networks;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| private_networks || is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err("the image host resolves to no public address".into());
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downloads(hosts: &[&str], private_networks: bool) -> Downloads {
        crate::install_crypto_provider();
        let settings = FalSettings {
            download_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            download_private_networks: private_networks,
            ..FalSettings::default()
        };
        Downloads::new(&settings).unwrap()
    }

    #[test]
    fn only_listed_hosts_and_their_subdomains_pass() {
        let d = downloads(&["fal.media"], false);
        for ok in [
            "https://fal.media/files/x.png",
            "https://v3.fal.media/files/monkey/x.png",
            "https://V3B.FAL.MEDIA./files/x.png",
            "http://v3.fal.media:8443/x.png",
        ] {
            assert!(d.check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://evilfal.media/x.png",
            "https://fal.media.evil.com/x.png",
            "https://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:8080/metrics",
            "http://[::1]/x.png",
            "http://localhost/x.png",
            "https://user:pw@v3.fal.media/x.png",
            "ftp://v3.fal.media/x.png",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(d.check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listed_addresses_still_need_to_be_public_unless_allowed() {
        let strict = downloads(&["127.0.0.1", "8.8.8.8"], false);
        assert!(strict.check("http://127.0.0.1:9/x.png").is_err());
        assert!(strict.check("http://8.8.8.8/x.png").is_ok());
        let lax = downloads(&["127.0.0.1"], true);
        assert!(lax.check("http://127.0.0.1:9/x.png").is_ok());
        assert!(lax.check("http://127.0.0.2:9/x.png").is_err(), "not listed");
    }

    #[test]
    fn non_public_addresses_are_recognised_in_every_spelling() {
        for private in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private}");
        }
        for public in [
            "8.8.8.8",
            "34.117.59.81",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public}");
        }
    }

    #[tokio::test]
    async fn names_resolving_only_to_private_addresses_are_refused() {
        let strict = PublicOnly {
            private_networks: false,
        };
        let err = match strict.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("no public address"), "{err}");
        let lax = PublicOnly {
            private_networks: true,
        };
        let addrs: Vec<_> = lax
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[test]
    fn downloads_must_be_images_of_the_asked_format() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        let mut headers = HeaderMap::new();
        assert!(check_image(png, &headers, OutputFormat::Png).is_ok());
        assert!(check_image(png, &headers, OutputFormat::Jpeg).is_err());
        assert!(check_image(b"# HELP x\n", &headers, OutputFormat::Png).is_err());
        headers.insert("content-type", "image/png".parse().unwrap());
        assert!(check_image(png, &headers, OutputFormat::Png).is_ok());
        headers.insert("content-type", "text/plain; version=0.0.4".parse().unwrap());
        assert!(check_image(png, &headers, OutputFormat::Png).is_err());
        headers.insert("content-type", "image/webp".parse().unwrap());
        assert!(check_image(png, &headers, OutputFormat::Png).is_err());
        headers.insert("content-type", "application/octet-stream".parse().unwrap());
        assert!(check_image(png, &headers, OutputFormat::Png).is_ok());
    }
}
