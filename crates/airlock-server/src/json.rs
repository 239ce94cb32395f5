//! JSON inputs checked against their own schema before they are parsed:
//! a field the schema does not name is refused, at any depth, with its
//! path and the accepted names.
//!
//! Why not serde's `deny_unknown_fields`: the bodies flatten the
//! library's shared option types (`#[serde(flatten)]`), and serde cannot
//! combine the two (a nested flatten hands every key to the inner type,
//! which then looks unknown to the outer one). The schema (schemars) is
//! what the OpenAPI document and the MCP tool list publish, so checking
//! against it refuses exactly what the documents do not describe.
//!
//! REST bodies go through [`parse`] (in `http::extract::ApiJson`), MCP
//! tool inputs through [`Strict`].

use crate::error::{Result, ServerError};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Parses `value` as `T` after checking that every field it has is one
/// `T`'s schema names.
///
/// # Errors
/// [`ServerError::BadRequest`] for an unknown field (naming it and the
/// accepted ones) or a value serde refuses.
pub fn parse<T: DeserializeOwned + JsonSchema>(value: Value) -> Result<T> {
    check_fields::<T>(&value).map_err(ServerError::bad_request)?;
    serde_json::from_value(value).map_err(|e| ServerError::bad_request(e.to_string()))
}

/// Checks `value`'s fields against `T`'s schema.
///
/// # Errors
/// The message of the first unknown field.
pub fn check_fields<T: JsonSchema>(value: &Value) -> std::result::Result<(), String> {
    let schema = schemars::schema_for!(T);
    let root = schema.as_value();
    check(value, root, root, "")
}

/// The schema behind a `$ref` into the root's `$defs`, or `schema`.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference
            .strip_prefix("#/$defs/")
            .and_then(|name| root.get("$defs")?.get(name))
            .map_or(schema, |target| resolve(target, root)),
        None => schema,
    }
}

/// Whether `schema` admits no array: its `type` names none, or each of
/// its `anyOf`/`oneOf` alternatives admits none. A schema that says
/// nothing of types admits arrays.
fn refuses_arrays(schema: &Value, root: &Value) -> bool {
    let schema = resolve(schema, root);
    match schema.get("type") {
        Some(Value::String(name)) => return name != "array",
        Some(Value::Array(names)) => return !names.iter().any(|n| n == "array"),
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alternatives) = schema.get(key).and_then(Value::as_array) {
            return !alternatives.is_empty()
                && alternatives.iter().all(|a| refuses_arrays(a, root));
        }
    }
    false
}

/// The properties of an object schema that accepts no others: its own and
/// those of its `allOf` parts. `None` for a map (`additionalProperties`
/// with a schema) or a schema that names no property.
fn closed_properties(schema: &Value, root: &Value) -> Option<Map<String, Value>> {
    if schema
        .get("additionalProperties")
        .is_some_and(|extra| extra != &Value::Bool(false))
    {
        return None;
    }
    let mut properties = Map::new();
    if let Some(own) = schema.get("properties").and_then(Value::as_object) {
        properties.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(more) = closed_properties(resolve(part, root), root) {
            properties.extend(more);
        }
    }
    (!properties.is_empty()).then_some(properties)
}

fn check(
    value: &Value,
    schema: &Value,
    root: &Value,
    path: &str,
) -> std::result::Result<(), String> {
    let schema = resolve(schema, root);
    // serde reads a struct from a sequence too (its fields in order): an
    // array where the schema wants none is refused here, as documented.
    if value.is_array() && refuses_arrays(schema, root) {
        let field = path.trim_end_matches('.');
        let field = if field.is_empty() { "the body" } else { field };
        return Err(format!("`{field}` must not be an array (see its schema)"));
    }
    match value {
        Value::Object(fields) => {
            if let Some(properties) = closed_properties(schema, root) {
                for (name, field) in fields {
                    let Some(field_schema) = properties.get(name) else {
                        let accepted: Vec<String> =
                            properties.keys().map(|k| format!("`{k}`")).collect();
                        return Err(format!(
                            "unknown field `{path}{name}`, expected one of {}",
                            accepted.join(", ")
                        ));
                    };
                    check(field, field_schema, root, &format!("{path}{name}."))?;
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    check(item, item_schema, root, &format!("{path}{index}."))?;
                }
            }
        }
        _ => {}
    }
    // `Option<T>` and enums: each alternative that describes an object
    // checks it (the others name no field).
    for key in ["anyOf", "oneOf"] {
        for alternative in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            check(value, alternative, root, path)?;
        }
    }
    Ok(())
}

/// An MCP tool's input, checked as [`parse`] checks a REST body; its
/// schema is `T`'s.
#[derive(Debug, Clone)]
pub struct Strict<T>(pub T);

impl<'de, T: DeserializeOwned + JsonSchema> serde::Deserialize<'de> for Strict<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        check_fields::<T>(&value).map_err(serde::de::Error::custom)?;
        serde_json::from_value(value)
            .map(Strict)
            .map_err(serde::de::Error::custom)
    }
}

impl<T: JsonSchema> JsonSchema for Strict<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, JsonSchema)]
    struct Inner {
        #[serde(default)]
        depth: u32,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    struct Outer {
        name: String,
        #[serde(flatten)]
        inner: Inner,
        #[serde(default)]
        nested: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        env: std::collections::BTreeMap<String, String>,
    }

    #[test]
    fn flattened_and_nested_fields_are_known() {
        let outer: Outer = parse(json!({
            "name": "x", "depth": 2, "nested": {"depth": 3}, "list": [{"depth": 4}],
            "env": {"ANY": "name"}
        }))
        .unwrap();
        assert_eq!(outer.name, "x");
        assert_eq!(outer.inner.depth, 2);
        assert_eq!(outer.nested.map(|n| n.depth), Some(3));
        assert_eq!(outer.list[0].depth, 4);
        assert_eq!(outer.env["ANY"], "name");
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path_at_any_depth() {
        for (value, field, accepted) in [
            (json!({"name": "x", "bogus": 1}), "`bogus`", "`name`, "),
            (
                json!({"name": "x", "nested": {"dept": 1}}),
                "`nested.dept`",
                "`depth`",
            ),
            (
                json!({"name": "x", "list": [{}, {"x": 1}]}),
                "`list.1.x`",
                "`depth`",
            ),
        ] {
            let err = parse::<Outer>(value.clone()).unwrap_err().to_string();
            assert!(err.contains(field), "{value}: {err}");
            assert!(err.contains(accepted), "the accepted names: {err}");
        }
    }

    #[test]
    fn an_array_where_the_schema_wants_an_object_is_refused() {
        // serde alone reads `[]` as an `Inner` with every field defaulted.
        assert!(serde_json::from_value::<Inner>(json!([])).is_ok());
        for (value, field) in [
            (json!({"name": "x", "nested": []}), "`nested`"),
            (json!({"name": "x", "list": [[]]}), "`list.0`"),
            (json!(["x"]), "`the body`"),
        ] {
            let err = parse::<Outer>(value.clone()).unwrap_err().to_string();
            assert!(err.contains(field), "{value}: {err}");
            assert!(err.contains("must not be an array"), "{value}: {err}");
        }
        // Arrays where the schema wants one still pass.
        assert!(parse::<Outer>(json!({"name": "x", "list": []})).is_ok());
    }

    #[test]
    fn strict_inputs_refuse_unknown_fields_and_keep_the_types_schema() {
        let ok: Strict<Inner> = serde_json::from_value(json!({"depth": 1})).unwrap();
        assert_eq!(ok.0.depth, 1);
        let err = serde_json::from_value::<Strict<Inner>>(json!({"deep": 1})).unwrap_err();
        assert!(err.to_string().contains("`deep`"), "{err}");
        assert_eq!(
            schemars::schema_for!(Strict<Inner>),
            schemars::schema_for!(Inner)
        );
    }
}
