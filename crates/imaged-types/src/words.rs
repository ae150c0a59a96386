//! Counts in words, for what people read: "1 image", "12,345 images".

/// `n` with its thousands grouped: `12,345`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` and the noun that agrees with it: `counted(1, "image", "images")`
/// is "1 image", `counted(2_000, …)` is "2,000 images".
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", grouped(n), if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_and_group() {
        assert_eq!(counted(0, "image", "images"), "0 images");
        assert_eq!(counted(1, "image", "images"), "1 image");
        assert_eq!(counted(1_234_567, "entry", "entries"), "1,234,567 entries");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
    }
}
