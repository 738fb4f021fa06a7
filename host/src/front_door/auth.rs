//! Bearer tokens: one to ask for decisions and read state, another for
//! anything that changes state. Compared in constant time.

use hyper::HeaderMap;

use super::error::FrontDoorError;

/// The tokens in force; `None` leaves that level open.
#[derive(Clone, Default)]
pub struct Tokens {
    /// For `/v1/decide`, `/v1/authz` and reads.
    pub decide: Option<String>,
    /// For state changes. Without one, those endpoints are refused.
    pub admin: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.debug_struct("Tokens")
            .field("decide", &self.decide.as_ref().map(|_| "<set>"))
            .field("admin", &self.admin.as_ref().map(|_| "<set>"))
            .finish()
    }
}

pub use crate::client::TOKEN_HEADER;

impl Tokens {
    /// The tokens `auth` configures.
    pub fn from_config(auth: &crate::config::AuthConfig) -> Self {
        Tokens {
            decide: auth.decide_token.as_ref().map(|s| s.expose().to_owned()),
            admin: auth.admin_token.as_ref().map(|s| s.expose().to_owned()),
        }
    }

    /// Checks the decide token (the admin token also passes).
    ///
    /// # Errors
    /// [`FrontDoorError::Unauthorized`] when a token is required and the
    /// request has none or another.
    pub fn check_decide(
        &self,
        headers: &HeaderMap,
        use_authorization: bool,
    ) -> Result<(), FrontDoorError> {
        let Some(decide) = &self.decide else {
            return Ok(());
        };
        let given = presented(headers, use_authorization);
        let ok = given.is_some_and(|g| {
            constant_time_eq(g.as_bytes(), decide.as_bytes())
                || self
                    .admin
                    .as_ref()
                    .is_some_and(|a| constant_time_eq(g.as_bytes(), a.as_bytes()))
        });
        if ok {
            Ok(())
        } else if given.is_none() {
            Err(FrontDoorError::Unauthorized("a bearer token is required"))
        } else {
            Err(FrontDoorError::Unauthorized(
                "the bearer token is not valid",
            ))
        }
    }

    /// Checks the admin token. With no admin token configured, every state
    /// change is refused: there is no open admin level.
    ///
    /// # Errors
    /// [`FrontDoorError::Unauthorized`] unless the admin token is presented.
    pub fn check_admin(&self, headers: &HeaderMap) -> Result<(), FrontDoorError> {
        let Some(admin) = &self.admin else {
            return Err(FrontDoorError::Unauthorized(
                "no admin token is configured; admin endpoints are off",
            ));
        };
        match presented(headers, true) {
            Some(g) if constant_time_eq(g.as_bytes(), admin.as_bytes()) => Ok(()),
            Some(_) => Err(FrontDoorError::Unauthorized("the admin token is not valid")),
            None => Err(FrontDoorError::Unauthorized(
                "an admin bearer token is required",
            )),
        }
    }
}

fn presented(headers: &HeaderMap, use_authorization: bool) -> Option<&str> {
    if let Some(t) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(t.trim());
    }
    if !use_authorization {
        return None;
    }
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equal bytes, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn decide_and_admin_levels() {
        let t = Tokens {
            decide: Some("d".into()),
            admin: Some("a".into()),
        };
        assert!(
            t.check_decide(&headers(&[("authorization", "Bearer d")]), true)
                .is_ok()
        );
        assert!(
            t.check_decide(&headers(&[("authorization", "bearer a")]), true)
                .is_ok()
        );
        assert!(
            t.check_decide(&headers(&[("x-arbiter-token", "d")]), false)
                .is_ok()
        );
        // The authorizer does not take `Authorization`: it is the original request's.
        assert!(
            t.check_decide(&headers(&[("authorization", "Bearer d")]), false)
                .is_err()
        );
        assert!(
            t.check_decide(&headers(&[("authorization", "Bearer x")]), true)
                .is_err()
        );
        assert!(t.check_decide(&headers(&[]), true).is_err());
        assert!(
            t.check_admin(&headers(&[("authorization", "Bearer a")]))
                .is_ok()
        );
        assert!(
            t.check_admin(&headers(&[("authorization", "Bearer d")]))
                .is_err()
        );
        let open = Tokens::default();
        assert!(open.check_decide(&headers(&[]), true).is_ok());
        assert!(
            open.check_admin(&headers(&[("authorization", "Bearer a")]))
                .is_err()
        );
        assert_eq!(
            format!("{t:?}"),
            "Tokens { decide: Some(\"<set>\"), admin: Some(\"<set>\") }"
        );
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
