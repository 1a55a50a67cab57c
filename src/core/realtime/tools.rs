//! Function tools offered to the model in `session.update` (GA shape: flat `{"type":"function",
//! "name","description","parameters"}`), and the answers to them that need no I/O.

use serde_json::{Value, json};

use crate::core::domain::tenant::{BuiltinTool, BusinessInfo, Tenant, WebhookTool};

/// The JSON definition sent in `session.tools`. `tenant` supplies what some tools describe:
/// the transfer targets of `transfer_call`, the booking rules of `take_booking`.
pub fn definition(tool: BuiltinTool, tenant: &Tenant) -> Value {
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
        BuiltinTool::TransferCall => transfer_call(tenant),
        BuiltinTool::TakeBooking => take_booking(tenant),
    }
}

fn transfer_call(tenant: &Tenant) -> Value {
    let names: Vec<&str> = tenant.transfer.iter().map(|t| t.name.as_str()).collect();
    let mut target = json!({
        "type": "string",
        "description": match names.first() {
            Some(default) => format!("Who to transfer to; leave it out for the default ({default})."),
            None => "Who to transfer to; leave it out for the default.".to_owned(),
        }
    });
    if !names.is_empty() {
        target["enum"] = json!(names);
    }
    json!({
        "type": "function",
        "name": "transfer_call",
        "description": "Transfer the caller to a person at the business. Use it when the caller asks for a \
                        person, or for something you cannot handle. First tell the caller, in the same turn, \
                        that you are transferring them.",
        "parameters": {
            "type": "object",
            "properties": {
                "target": target,
                "reason": {"type": "string", "description": "Why the caller is being transferred, in a few words"}
            },
            "required": ["reason"],
            "additionalProperties": false
        }
    })
}

fn take_booking(tenant: &Tenant) -> Value {
    let rules = match &tenant.booking {
        Some(r) => format!(
            " Parties of {}–{} people, up to {} days ahead; the last booking is {} minutes before closing. \
             Opening hours: {}.",
            r.min_party,
            r.max_party,
            r.max_days_ahead,
            r.last_booking_before_close_min,
            r.hours.describe()
        ),
        None => String::new(),
    };
    json!({
        "type": "function",
        "name": "take_booking",
        "description": format!(
            "Book a table. Call it only after you have confirmed every detail (date, time, number of people, \
             name) with the caller. Then read the result back: if it was booked, repeat the booking; if not, \
             explain the problems and offer an alternative.{rules}"
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "date": {
                    "type": "string",
                    "description": "Date of the booking, YYYY-MM-DD. Resolve relative dates (\"tomorrow\", \
                                    \"next Friday\") using today's date given in the instructions. A time after \
                                    midnight belongs to the next calendar date."
                },
                "time": {"type": "string", "description": "Time of the booking, HH:MM, 24-hour clock"},
                "party_size": {"type": "integer", "minimum": 1, "description": "Number of people"},
                "name": {"type": "string", "description": "Name the booking is under"},
                "phone": {"type": "string", "description": "Caller's phone number, if they gave one"},
                "notes": {"type": "string", "description": "Anything else: allergies, high chair, occasion"}
            },
            "required": ["date", "time", "party_size", "name"],
            "additionalProperties": false
        }
    })
}

/// The definition of a tenant's webhook tool (GA flat function shape, its schema as given).
pub fn webhook_definition(tool: &WebhookTool) -> Value {
    json!({
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
    })
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
pub(crate) mod tests {
    use super::*;
    use crate::core::domain::tenant::{
        AudioFormat, BargeIn, BookingRules, DtmfAction, TransferTarget, TurnDetection, WeeklyHours,
    };

    /// A tenant with everything: two transfer targets and booking rules.
    pub(crate) fn full_tenant() -> Tenant {
        let mut hours = WeeklyHours::default();
        hours.days[1] = vec![(720, 870), (1140, 1350)];
        hours.days[4] = vec![(1140, 1500)];
        Tenant {
            id: "t".into(),
            name: "Trattoria".into(),
            numbers: vec!["+39021111111".into()],
            language: "it".into(),
            voice: "marin".into(),
            prompt_file: "p.md".into(),
            instructions: "Sei l'assistente.".into(),
            greeting: "Ciao".into(),
            summary_to: vec![],
            api_keys_sha256: vec![],
            audio_format: AudioFormat::Pcmu,
            fallback: false,
            turn_detection: TurnDetection::default(),
            barge_in: BargeIn::default(),
            idle_prompt_ms: 0,
            timezone: "Europe/Rome".into(),
            tools: BuiltinTool::ALL.to_vec(),
            business: BusinessInfo::default(),
            transfer: vec![
                TransferTarget { name: "kitchen".into(), number: "+39021111198".into() },
                TransferTarget { name: "staff".into(), number: "+39021111199".into() },
            ],
            booking: Some(BookingRules {
                min_party: 1,
                max_party: 12,
                hours,
                last_booking_before_close_min: 30,
                max_days_ahead: 60,
            }),
            dtmf: vec![('0', DtmfAction::Transfer(None))],
            webhook_tools: vec![],
        }
    }

    #[test]
    fn definitions_are_ga_function_tools() {
        let tenant = full_tenant();
        for t in BuiltinTool::ALL {
            let d = definition(t, &tenant);
            assert_eq!(d["type"], "function");
            assert_eq!(d["name"], t.name());
            assert_eq!(d["parameters"]["type"], "object");
            assert_eq!(d["parameters"]["additionalProperties"], false);
            // Every required parameter is a declared property.
            for r in d["parameters"]["required"].as_array().into_iter().flatten() {
                assert!(d["parameters"]["properties"].get(r.as_str().unwrap()).is_some(), "{d}");
            }
        }
    }

    #[test]
    fn transfer_targets_are_an_optional_enum() {
        let d = definition(BuiltinTool::TransferCall, &full_tenant());
        let target = &d["parameters"]["properties"]["target"];
        assert_eq!(target["enum"], json!(["kitchen", "staff"]));
        assert!(target["description"].as_str().unwrap().contains("default (kitchen)"));
        assert_eq!(d["parameters"]["required"], json!(["reason"]));
        assert_eq!(d["parameters"]["properties"]["reason"]["type"], "string");
    }

    #[test]
    fn take_booking_describes_its_parameters_and_rules() {
        let d = definition(BuiltinTool::TakeBooking, &full_tenant());
        let p = &d["parameters"];
        assert_eq!(p["required"], json!(["date", "time", "party_size", "name"]));
        assert_eq!(p["properties"]["party_size"]["type"], "integer");
        assert_eq!(p["properties"]["party_size"]["minimum"], 1);
        assert!(p["properties"]["date"]["description"].as_str().unwrap().contains("YYYY-MM-DD"));
        assert!(p["properties"]["date"]["description"].as_str().unwrap().contains("today's date"));
        assert!(p["properties"]["time"]["description"].as_str().unwrap().contains("HH:MM"));
        for optional in ["phone", "notes"] {
            assert_eq!(p["properties"][optional]["type"], "string");
        }
        let desc = d["description"].as_str().unwrap();
        assert!(desc.contains("only after you have confirmed"), "{desc}");
        assert!(desc.contains("Parties of 1–12 people, up to 60 days ahead"), "{desc}");
        assert!(desc.contains("Tue 12:00–14:30, 19:00–22:30"), "{desc}");
    }

    #[test]
    fn webhook_tools_keep_their_schema() {
        let tool = WebhookTool {
            name: "check_loyalty".into(),
            description: "Loyalty points of a customer".into(),
            parameters: json!({"type": "object", "properties": {"phone": {"type": "string"}}, "required": ["phone"]}),
            url: "https://crm.example.com/hooks/loyalty".into(),
            secret: "0123456789abcdef".into(),
            timeout_ms: 5000,
            side_effects: false,
        };
        let d = webhook_definition(&tool);
        assert_eq!(
            d,
            json!({"type": "function", "name": "check_loyalty", "description": "Loyalty points of a customer",
                   "parameters": tool.parameters})
        );
        assert!(!d.to_string().contains("0123456789abcdef"));
        assert!(d.get("url").is_none());
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
