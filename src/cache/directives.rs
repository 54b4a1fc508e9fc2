//! What a request's `Cache-Control` (or `Pragma`) asks of the cache.

/// `no-cache` and `no-store`, as a request may send them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheDirectives {
    /// Do not answer from the cache (a fresh generation refreshes the entry).
    pub no_cache: bool,
    /// Do not keep this answer.
    pub no_store: bool,
}

impl CacheDirectives {
    pub fn parse(cache_control: Option<&str>, pragma: Option<&str>) -> Self {
        let mut d = CacheDirectives::default();
        for token in cache_control.unwrap_or("").split(',') {
            let token = token.trim().to_ascii_lowercase();
            match token.as_str() {
                "no-cache" | "max-age=0" => d.no_cache = true,
                "no-store" => d.no_store = true,
                _ => {}
            }
        }
        if cache_control.is_none()
            && pragma.is_some_and(|p| p.trim().eq_ignore_ascii_case("no-cache"))
        {
            d.no_cache = true;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives_parse() {
        let p = |cc: Option<&str>, pragma: Option<&str>| CacheDirectives::parse(cc, pragma);
        assert_eq!(p(None, None), CacheDirectives::default());
        assert!(p(Some("no-cache"), None).no_cache);
        assert!(p(Some("No-Store"), None).no_store);
        let both = p(Some("no-cache, no-store"), None);
        assert!(both.no_cache && both.no_store);
        assert!(p(Some("max-age=0"), None).no_cache);
        assert!(p(None, Some("no-cache")).no_cache);
        assert!(!p(Some("max-age=60"), Some("no-cache")).no_cache);
    }
}
