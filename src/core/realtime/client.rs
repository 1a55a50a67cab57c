//! Client events we send to the Realtime API (GA dialect, protocols.md C.4).
//! `input_audio_buffer.append` is written by hand: it is the per-frame hot path.

use serde_json::json;

/// `{"type":"input_audio_buffer.append","audio":"<b64>"}`. `b64` must be valid base64 (the
/// caller has decoded it), so it needs no JSON escaping.
pub fn append_audio(b64: &str) -> String {
    let mut s = String::with_capacity(48 + b64.len());
    s.push_str(r#"{"type":"input_audio_buffer.append","audio":""#);
    s.push_str(b64);
    s.push_str(r#""}"#);
    s
}

/// Cut an assistant item to what the caller heard.
pub fn truncate(item_id: &str, audio_end_ms: u64) -> String {
    json!({"type":"conversation.item.truncate","item_id":item_id,"content_index":0,"audio_end_ms":audio_end_ms})
        .to_string()
}

/// Cancel the active response.
pub fn response_cancel() -> String {
    r#"{"type":"response.cancel"}"#.to_string()
}

/// Ask for a response; `instructions`, when given, apply to this response only.
pub fn response_create(event_id: &str, instructions: Option<&str>) -> String {
    match instructions {
        Some(i) => json!({"type":"response.create","event_id":event_id,"response":{"instructions":i}}),
        None => json!({"type":"response.create","event_id":event_id}),
    }
    .to_string()
}

/// The result of a function call, then the model needs a `response.create` to go on.
pub fn function_call_output(call_id: &str, output: &str) -> String {
    json!({"type":"conversation.item.create","item":{"type":"function_call_output","call_id":call_id,"output":output}})
        .to_string()
}

/// A system text item, e.g. the conversation so far for a new session.
pub fn system_text_item(text: &str) -> String {
    json!({"type":"conversation.item.create","item":{"type":"message","role":"system","content":[{"type":"input_text","text":text}]}})
        .to_string()
}

/// A user text item, e.g. to tell the model that the caller pressed a key.
pub fn user_text_item(text: &str) -> String {
    json!({"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":text}]}})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_ga_json() {
        let v: serde_json::Value = serde_json::from_str(&append_audio("/////w==")).unwrap();
        assert_eq!(v, json!({"type":"input_audio_buffer.append","audio":"/////w=="}));
        let v: serde_json::Value = serde_json::from_str(&truncate("item_1", 1840)).unwrap();
        assert_eq!(
            v,
            json!({"type":"conversation.item.truncate","item_id":"item_1","content_index":0,"audio_end_ms":1840})
        );
        let v: serde_json::Value = serde_json::from_str(&response_create("e1", Some("Say \"hi\""))).unwrap();
        assert_eq!(v["response"]["instructions"], "Say \"hi\"");
        assert_eq!(v["event_id"], "e1");
    }
}
