//! SMS bodies that fit one GSM-7 segment.
//!
//! An SMS is encoded either in GSM-7 (the GSM 03.38 alphabet: 160 characters per segment) or,
//! as soon as one character falls outside it, in UCS-2 (70 characters per segment). An alert
//! written in French with a `ç`, a `ê` or a typographic apostrophe would silently switch to
//! UCS-2 and be split into two or three segments — each billed, and reassembled out of order
//! by some handsets. So [`sms_body`] keeps the text in GSM-7: the accented letters GSM-7 has
//! (`é è ù ì ò à`, `É Ç Ä Ö Ñ Ü`, …) are kept, the others are transliterated to their plain
//! letter (`ê` → `e`, `ç` → `c`, `œ` → `oe`), typographic punctuation becomes its ASCII form,
//! and anything else becomes `?`. The result is at most 160 septets, truncated with `...`
//! when longer, so an alert is always exactly one segment.
//!
//! The characters of the extension table (`€ [ ] { } \ ^ ~ |` and form feed) are allowed but
//! take two septets each (an escape, then the character), and are counted as such.

/// Septets in one single-segment SMS.
pub const MAX_SEPTETS: usize = 160;

const ELLIPSIS: &str = "...";

/// The GSM 03.38 basic character set (the escape code 0x1B excluded).
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                     ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: each costs two septets.
const EXTENSION: &str = "\u{0C}^{}\\[~]|€";

/// How many septets `c` takes in GSM-7, or `None` if GSM-7 cannot encode it.
fn char_septets(c: char) -> Option<usize> {
    if BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The length of `text` in GSM-7 septets (extension characters count two), or `None` if
/// some character of `text` is not in GSM-7 (the SMS would be sent as UCS-2).
pub fn septets(text: &str) -> Option<usize> {
    text.chars().map(char_septets).sum()
}

/// The GSM-7 replacement of a character outside GSM-7: `Some("")` drops it, `None` means no
/// sensible replacement is known.
fn transliterate(c: char, next: Option<char>) -> Option<&'static str> {
    Some(match c {
        'á' | 'â' | 'ã' | 'ā' | 'ą' => "a",
        'À' | 'Á' | 'Â' | 'Ã' | 'Ā' | 'Ą' => "A",
        'ç' | 'ć' | 'č' => "c",
        'Ć' | 'Č' => "C",
        'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
        'È' | 'Ê' | 'Ë' | 'Ē' | 'Ė' | 'Ę' | 'Ě' => "E",
        'í' | 'î' | 'ï' | 'ī' => "i",
        'Ì' | 'Í' | 'Î' | 'Ï' | 'Ī' => "I",
        'ó' | 'ô' | 'õ' | 'ō' => "o",
        'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ō' => "O",
        'ú' | 'û' | 'ū' => "u",
        'Ù' | 'Ú' | 'Û' | 'Ū' => "U",
        'ý' | 'ÿ' => "y",
        'Ý' | 'Ÿ' => "Y",
        'ń' | 'ň' => "n",
        'ś' | 'š' => "s",
        'Ś' | 'Š' => "S",
        'ź' | 'ż' | 'ž' => "z",
        'Ź' | 'Ż' | 'Ž' => "Z",
        'ł' => "l",
        'Ł' => "L",
        'œ' => "oe",
        'Œ' => "OE",
        'µ' => "u",
        '’' | '‘' | '‚' | '′' | '`' | '´' => "'",
        '“' | '”' | '„' | '«' | '»' | '″' => "\"",
        '‐' | '‑' | '‒' | '–' | '—' | '―' | '−' => "-",
        '…' => "...",
        '•' | '·' => "-",
        '×' => "x",
        '÷' => "/",
        '±' => "+/-",
        '≤' => "<=",
        '≥' => ">=",
        '≠' => "!=",
        '²' => "2",
        '³' => "3",
        '½' => "1/2",
        '¼' => "1/4",
        '‰' => "o/oo",
        // `28 °C` reads as well as `28 C`; a bare degree sign is spelled out.
        '°' if matches!(next, Some('C' | 'F')) => "",
        '°' => "deg",
        // Every kind of space (non-breaking, narrow, thin, tab…) is a plain space.
        '\t' | '\u{a0}' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}' => " ",
        // Invisible characters and combining accents (text in decomposed form: `e` + U+0301)
        // carry nothing a plain letter does not already say.
        '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}' | '\u{ad}' | '\u{300}'..='\u{36f}' => "",
        // Other control characters (form feed included, though GSM-7 has it) mean nothing on
        // a phone screen.
        c if c.is_control() => " ",
        _ => return None,
    })
}

/// `text` as a single-segment GSM-7 SMS body: every character in the GSM 03.38 alphabet
/// (transliterated, or `?` when there is no sensible replacement), at most [`MAX_SEPTETS`]
/// septets, ending with `...` when it had to be shortened. See the module documentation.
pub fn sms_body(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if char_septets(c).is_some() && !(c.is_control() && c != '\n' && c != '\r') {
            out.push(c);
        } else {
            out.push_str(transliterate(c, chars.peek().copied()).unwrap_or("?"));
        }
    }
    if septets(&out).is_some_and(|n| n <= MAX_SEPTETS) {
        return out;
    }
    let budget = MAX_SEPTETS - ELLIPSIS.len();
    let mut used = 0;
    let mut end = 0;
    for (i, c) in out.char_indices() {
        used += char_septets(c).unwrap_or(1);
        if used > budget {
            break;
        }
        end = i + c.len_utf8();
    }
    out.truncate(end);
    // `Température 29...` rather than `Température 29 ...`
    let kept = out.trim_end().len();
    out.truncate(kept);
    out.push_str(ELLIPSIS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_is_complete() {
        // 128 positions, minus the escape to the extension table.
        assert_eq!(BASIC.chars().count(), 127);
        assert_eq!(EXTENSION.chars().count(), 10);
    }

    #[test]
    fn a_french_alert_fits_one_segment() {
        let text = "CRITIQUE Lot LL2512001 : refus alimentaire, dose réelle 210 g pour 350 g \
                    théoriques (60 %). Gavé à 18h, vérifiez l’abreuvoir et la température.";
        let body = sms_body(text);
        assert_eq!(
            body,
            "CRITIQUE Lot LL2512001 : refus alimentaire, dose réelle 210 g pour 350 g \
             théoriques (60 %). Gavé à 18h, vérifiez l'abreuvoir et la température."
        );
        let n = septets(&body).expect("GSM-7 only");
        assert!(n <= MAX_SEPTETS, "{n} septets");
        // What is already a valid body comes back unchanged.
        assert_eq!(sms_body(&body), body);
    }

    #[test]
    fn accents_outside_gsm7_are_transliterated() {
        assert_eq!(
            sms_body("ç Ç é è ê ë à â î ï ô û ù ü œ Œ"),
            "c Ç é è e e à a i i o u ù ü oe OE"
        );
        assert_eq!(
            sms_body("« Fièvre » – 28 °C… 3°"),
            "\" Fièvre \" - 28 C... 3deg"
        );
        assert_eq!(sms_body("Reçu\u{a0}: 5\u{202f}%"), "Recu : 5 %");
        assert_eq!(sms_body("e\u{301}te\u{301}"), "ete");
        assert_eq!(sms_body("ok 🦆 ✓"), "ok ? ?");
        assert_eq!(sms_body("a\tb\u{0C}c\nd"), "a b c\nd");
        for body in ["ç", "«»", "🦆", "ê"] {
            assert!(septets(&sms_body(body)).is_some());
        }
    }

    #[test]
    fn septets_counts_extension_characters_twice() {
        assert_eq!(septets("abc"), Some(3));
        assert_eq!(septets("5 €"), Some(4));
        assert_eq!(septets("[x]{}"), Some(9));
        assert_eq!(septets("é"), Some(1));
        assert_eq!(septets("ê"), None);
        assert_eq!(septets(""), Some(0));
        // Kept as they are: they are GSM-7.
        assert_eq!(sms_body("coût 5 € [lot]"), "cout 5 € [lot]");
    }

    #[test]
    fn long_text_is_truncated_to_one_segment() {
        let exact = "a".repeat(MAX_SEPTETS);
        assert_eq!(sms_body(&exact), exact);

        let body = sms_body(&"é".repeat(200));
        assert_eq!(septets(&body), Some(MAX_SEPTETS));
        assert!(body.ends_with("é..."));
        assert_eq!(body.chars().count(), MAX_SEPTETS);

        // An extension character that would straddle the limit is left out.
        let body = sms_body(&format!("{}€€€", "a".repeat(156)));
        assert_eq!(body, format!("{}...", "a".repeat(156)));
        let body = sms_body(&format!("{}€€€", "a".repeat(155)));
        assert_eq!(body, format!("{}€...", "a".repeat(155)));
        assert_eq!(septets(&body), Some(MAX_SEPTETS));

        // Transliteration can lengthen the text past the limit.
        let body = sms_body(&"œ".repeat(100));
        assert!(septets(&body).is_some_and(|n| n <= MAX_SEPTETS));
        assert!(body.ends_with("..."));

        // No dangling space before the ellipsis.
        let body = sms_body(&format!("{} {}", "a".repeat(156), "b".repeat(10)));
        assert_eq!(body, format!("{}...", "a".repeat(156)));
    }
}
