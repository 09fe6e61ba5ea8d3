//! `application/x-www-form-urlencoded` parameters as 4pyun and lbbtech servers see them.

use serde_json::{Map, Value};

/// Decoded form fields in arrival order. Lookups take the first occurrence, as a servlet's
/// `getParameter` does; query-string fields come before body fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Parses the query string and, when the body is declared as a form, the body. A body of
    /// another content type carries no parameters, as on a real form-reading server.
    pub fn parse(query: Option<&str>, content_type: Option<&str>, body: &[u8]) -> Self {
        let mut pairs: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if content_type.is_some_and(is_form_content_type) {
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        Form { pairs }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Form {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The first value of `name`, blank or not.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name` unless it is empty or whitespace only.
    pub fn present(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }

    /// Each name once, with its first value, in arrival order.
    pub fn distinct(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().enumerate().filter_map(|(i, (k, v))| {
            let first = !self.pairs[..i].iter().any(|(seen, _)| seen == k);
            first.then_some((k.as_str(), v.as_str()))
        })
    }

    /// The fields as a JSON object of strings, for the request record.
    pub fn to_json(&self) -> Value {
        let map: Map<String, Value> = self
            .distinct()
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect();
        Value::Object(map)
    }
}

fn is_form_content_type(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|mime| {
        mime.trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_utf8_and_plus_and_keeps_first() {
        let form = Form::parse(
            Some("a=q"),
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            b"vin=%E5%B7%9DA660N2&a=b&x=+&y=1+2",
        );
        assert_eq!(form.get("vin"), Some("川A660N2"));
        assert_eq!(form.get("a"), Some("q"));
        assert_eq!(form.get("x"), Some(" "));
        assert_eq!(form.present("x"), None);
        assert_eq!(form.get("y"), Some("1 2"));
        assert_eq!(form.distinct().count(), 4);
    }

    #[test]
    fn other_content_types_carry_no_body_params() {
        let form = Form::parse(None, Some("application/json"), br#"{"a":"b"}"#);
        assert_eq!(form.get("a"), None);
        assert_eq!(Form::parse(None, None, b"a=b").get("a"), None);
    }
}
