//! Language tags: containers say ISO 639-2 (`eng`, `fre`/`fra`); HLS and
//! DASH want BCP 47 (`en`, `fr`). `isolang` knows ISO 639-1 and 639-3
//! (= 639-2/T); the twenty 639-2/B codes that differ are mapped here.

use isolang::Language;

/// ISO 639-2/B codes and their 639-2/T (639-3) equivalents.
const BIBLIOGRAPHIC: [(&str, &str); 20] = [
    ("alb", "sqi"),
    ("arm", "hye"),
    ("baq", "eus"),
    ("bur", "mya"),
    ("chi", "zho"),
    ("cze", "ces"),
    ("dut", "nld"),
    ("fre", "fra"),
    ("geo", "kat"),
    ("ger", "deu"),
    ("gre", "ell"),
    ("ice", "isl"),
    ("mac", "mkd"),
    ("mao", "mri"),
    ("may", "msa"),
    ("per", "fas"),
    ("rum", "ron"),
    ("slo", "slk"),
    ("tib", "bod"),
    ("wel", "cym"),
];

fn language(code: &str) -> Option<Language> {
    let code = code.trim().to_ascii_lowercase();
    let primary = code.split(['-', '_']).next().unwrap_or("");
    let terminological = BIBLIOGRAPHIC
        .iter()
        .find(|(b, _)| *b == primary)
        .map_or(primary, |(_, t)| *t);
    match terminological.len() {
        2 => Language::from_639_1(terminological),
        3 => Language::from_639_3(terminological),
        _ => None,
    }
}

/// The BCP 47 tag for a container's language tag: the two-letter code
/// where one exists, else the three-letter one; `und` when unknown.
pub fn bcp47(tag: Option<&str>) -> String {
    match tag.and_then(language) {
        Some(l) => l.to_639_1().unwrap_or(l.to_639_3()).to_string(),
        None => "und".into(),
    }
}

/// A name for a track menu: the language's English name, or "Track N".
pub fn display_name(bcp47: &str, ordinal: usize) -> String {
    match language(bcp47).filter(|_| bcp47 != "und") {
        Some(l) => l.to_name().to_string(),
        None => format!("Track {ordinal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_tags_become_bcp47() {
        assert_eq!(bcp47(Some("eng")), "en");
        assert_eq!(bcp47(Some("fre")), "fr");
        assert_eq!(bcp47(Some("fra")), "fr");
        assert_eq!(bcp47(Some("ger")), "de");
        assert_eq!(bcp47(Some("en-US")), "en");
        assert_eq!(bcp47(Some("haw")), "haw", "no two-letter code");
        assert_eq!(bcp47(Some("xx1")), "und");
        assert_eq!(bcp47(None), "und");
        assert_eq!(display_name("fr", 2), "French");
        assert_eq!(display_name("und", 3), "Track 3");
    }
}
