//! Function tools offered to the model in `session.update` (GA shape: flat `{"type":"function",
//! "name","description","parameters"}`), and the answers to them that need no I/O.

use serde_json::{Value, json};

use crate::core::domain::tenant::{BuiltinTool, BusinessInfo};

/// The JSON definition sent in `session.tools`.
pub fn definition(tool: BuiltinTool) -> Value {
    match tool {
        BuiltinTool::EndCall => json!({
            "type": "function",
            "name": "end_call",
            "description": "Hang up the phone call. Call it only when the conversation is over, after you \
                            have said goodbye to the caller in the same turn.",
            "parameters": {
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "Why the call is ending"}},
                "required": ["reason"],
                "additionalProperties": false
            }
        }),
        BuiltinTool::BusinessInfo => json!({
            "type": "function",
            "name": "business_info",
            "description": "The business's opening hours, address, menu or service highlights and notes. \
                            Use it instead of guessing.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": false}
        }),
    }
}

/// The `business_info` answer, as the JSON string sent back in `function_call_output`.
pub fn business_info(name: &str, info: &BusinessInfo) -> String {
    json!({
        "name": name,
        "address": info.address,
        "opening_hours": info.hours,
        "highlights": info.highlights,
        "notes": info.notes,
    })
    .to_string()
}

/// The answer for a tool the tenant does not have (the model asked for something unknown).
pub fn unknown_tool(name: &str) -> String {
    json!({"error": format!("unknown tool {name:?}")}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_ga_function_tools() {
        for t in [BuiltinTool::EndCall, BuiltinTool::BusinessInfo] {
            let d = definition(t);
            assert_eq!(d["type"], "function");
            assert_eq!(d["name"], t.name());
            assert_eq!(d["parameters"]["type"], "object");
            assert_eq!(d["parameters"]["additionalProperties"], false);
        }
    }

    #[test]
    fn business_info_answers_from_the_tenant() {
        let info = BusinessInfo {
            address: Some("Via Roma 1, Milano".into()),
            hours: Some("mar-dom 12-15, 19-23".into()),
            highlights: None,
            notes: None,
        };
        let v: Value = serde_json::from_str(&business_info("Trattoria", &info)).unwrap();
        assert_eq!(v["address"], "Via Roma 1, Milano");
        assert_eq!(v["opening_hours"], "mar-dom 12-15, 19-23");
        assert!(v["highlights"].is_null());
    }
}
