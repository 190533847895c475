//! The constraints a param may carry beside its type (`enum`, `minimum`, `maximum`, `pattern`),
//! with JSON Schema's meaning, so that what a trigger may pass is checked before a run exists.

use serde_json::Value as Json;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParamRules {
    /// `enum:` the only values accepted.
    pub one_of: Option<Vec<Json>>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    /// `pattern:` a regular expression a string must match somewhere, as in JSON Schema (write
    /// `^...$` to match the whole value).
    pub pattern: Option<String>,
}

impl ParamRules {
    pub fn is_empty(&self) -> bool {
        *self == ParamRules::default()
    }

    /// Why `v` breaks a rule, if it does; `v` is already of the param's type.
    pub fn check(&self, v: &Json) -> Option<String> {
        if let Some(values) = &self.one_of
            && !values.contains(v)
        {
            let list: Vec<String> = values.iter().map(Json::to_string).collect();
            return Some(format!("must be one of {}, got {v}", list.join(", ")));
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = self.minimum
                && n < min
            {
                return Some(format!("must be at least {min}, got {v}"));
            }
            if let Some(max) = self.maximum
                && n > max
            {
                return Some(format!("must be at most {max}, got {v}"));
            }
        }
        if let (Some(pattern), Some(s)) = (&self.pattern, v.as_str()) {
            // Compiled once at validation; a pattern that no longer compiles cannot reach here.
            let matches = regex::Regex::new(pattern).is_ok_and(|re| re.is_match(s));
            if !matches {
                return Some(format!("must match the pattern {pattern:?}, got {v}"));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_rule_refuses_what_it_should() {
        let rules = ParamRules {
            one_of: Some(vec![json!("eu"), json!("us")]),
            ..Default::default()
        };
        assert_eq!(rules.check(&json!("eu")), None);
        assert_eq!(
            rules.check(&json!("fr")).as_deref(),
            Some(r#"must be one of "eu", "us", got "fr""#)
        );
        let rules = ParamRules {
            minimum: Some(0.0),
            maximum: Some(1.0),
            ..Default::default()
        };
        assert_eq!(rules.check(&json!(0)), None);
        assert_eq!(rules.check(&json!(1.0)), None);
        assert_eq!(
            rules.check(&json!(1.5)).as_deref(),
            Some("must be at most 1, got 1.5")
        );
        assert_eq!(
            rules.check(&json!(-1)).as_deref(),
            Some("must be at least 0, got -1")
        );
        let rules = ParamRules {
            pattern: Some("^[a-z_]+$".into()),
            ..Default::default()
        };
        assert_eq!(rules.check(&json!("churn_model")), None);
        assert_eq!(
            rules.check(&json!("Churn; rm -rf /")).as_deref(),
            Some(r#"must match the pattern "^[a-z_]+$", got "Churn; rm -rf /""#)
        );
        // Unanchored, as in JSON Schema.
        let rules = ParamRules {
            pattern: Some("[0-9]".into()),
            ..Default::default()
        };
        assert_eq!(rules.check(&json!("v2")), None);
        assert!(ParamRules::default().is_empty());
    }
}
