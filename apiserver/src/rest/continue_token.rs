//! Continue tokens of paginated lists: the snapshot revision and the last key returned, so every
//! page reads the same snapshot (an expired revision is 410 Gone).

use crate::errors::{ApiError, ApiResult};

pub fn encode(rev: i64, key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{rev}.{hex}")
}

pub fn decode(token: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let (rev, hex) = token.split_once('.').ok_or_else(bad)?;
    let rev = rev.parse::<i64>().map_err(|_| bad())?;
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    Ok((rev, String::from_utf8(bytes).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_garbage_is_a_bad_request() {
        let t = encode(42, "pods/default/web-1");
        assert_eq!(decode(&t).unwrap(), (42, "pods/default/web-1".to_string()));
        for bad in ["", "x", "1.zz", "1.abc", "a.00", "1.ff"] {
            assert_eq!(decode(bad).unwrap_err().code, 400, "{bad}");
        }
    }
}
