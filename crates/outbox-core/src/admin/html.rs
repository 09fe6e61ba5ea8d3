//! A tiny HTML builder for the admin page. Markup enters only as `&'static str` (written
//! in this crate), data only through [`Html::text`], [`Html::attr`] and [`Html::num`],
//! which escape it: payloads, keys, reasons and sink names are producer and operator
//! data, and escaping by construction means no call site can forget.

use std::fmt::{Display, Write};

/// Escapes text for HTML element content and double-quoted attribute values. The one
/// escaping function of the page.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML document being written.
#[derive(Default)]
pub struct Html(String);

impl Html {
    pub fn new() -> Html {
        Html::default()
    }

    /// Markup written by this crate (tags, fixed text). `'static` so data cannot pass here.
    pub fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Text content, escaped.
    pub fn text(&mut self, text: impl Display) -> &mut Self {
        self.0.push_str(&escape(&text.to_string()));
        self
    }

    /// ` name="value"`, the value escaped. Call right after an unclosed tag, e.g.
    /// `raw("<a").attr("href", url).raw(">")`.
    pub fn attr(&mut self, name: &'static str, value: impl Display) -> &mut Self {
        self.0.push(' ');
        self.0.push_str(name);
        self.0.push_str("=\"");
        self.0.push_str(&escape(&value.to_string()));
        self.0.push('"');
        self
    }

    /// A number for SVG coordinates: finite, one decimal.
    pub fn num(&mut self, n: f64) -> &mut Self {
        let n = if n.is_finite() { n } else { 0.0 };
        let _ = write!(self.0, "{n:.1}");
        self
    }

    /// `<tag>text</tag>`, the text escaped.
    pub fn element(
        &mut self,
        open: &'static str,
        text: impl Display,
        close: &'static str,
    ) -> &mut Self {
        self.raw(open).text(text).raw(close)
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_attributes_are_escaped() {
        let evil = r#"<script>alert("x")</script> & 'y'"#;
        let mut h = Html::new();
        h.raw("<a")
            .attr("href", evil)
            .raw(">")
            .text(evil)
            .raw("</a>");
        let out = h.into_string();
        assert_eq!(
            out,
            "<a href=\"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;\">\
             &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;</a>"
        );
    }

    #[test]
    fn numbers_are_always_finite() {
        let mut h = Html::new();
        h.num(f64::NAN)
            .raw(" ")
            .num(f64::INFINITY)
            .raw(" ")
            .num(1.3);
        assert_eq!(h.into_string(), "0.0 0.0 1.3");
    }
}
