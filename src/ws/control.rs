//! Close frame payloads (RFC 6455 5.5.1 and 7.4): an optional status code and a UTF-8
//! reason, validated before the caller sees them so it can echo the code back as is.

use super::error::{WsError, is_valid_close_code};

/// Splits a close payload into its status code and reason. Empty: no code. One byte:
/// half a code (1002). Codes outside the sendable ranges: 1002. Reason not UTF-8: 1007.
pub fn parse_close(payload: &[u8]) -> Result<(Option<u16>, &str), WsError> {
    match payload {
        [] => Ok((None, "")),
        [_] => Err(WsError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok((Some(code), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut out = code.to_be_bytes().to_vec();
        out.extend_from_slice(reason);
        out
    }

    #[test]
    fn empty_close_has_no_code() {
        assert_eq!(parse_close(&[]), Ok((None, "")));
    }

    #[test]
    fn one_byte_close_is_protocol_error() {
        assert_eq!(parse_close(&[0x03]).map_err(|e| e.close_code()), Err(1002));
    }

    #[test]
    fn close_code_and_reason_are_returned() {
        assert_eq!(parse_close(&payload(1000, b"bye")), Ok((Some(1000), "bye")));
        assert_eq!(parse_close(&payload(4999, b"")), Ok((Some(4999), "")));
    }

    #[test]
    fn reserved_close_codes_are_protocol_error() {
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let bytes = payload(code, b"");
            let got = parse_close(&bytes);
            assert_eq!(got, Err(WsError::InvalidCloseCode(code)));
            assert_eq!(got.map_err(|e| e.close_code()), Err(1002));
        }
    }

    #[test]
    fn close_reason_must_be_utf8() {
        let bytes = payload(1000, &[0xce, 0xba, 0xff]);
        let got = parse_close(&bytes);
        assert_eq!(got.map_err(|e| e.close_code()), Err(1007));
    }
}
