//! The states one instance declared so far, kept apart by namespace
//! (keyed and operator state). The declarations themselves are durable
//! data in `weir_format::declared`.

pub use weir_format::declared::{DeclaredKind, DeclaredState, Redistribution};

/// The declarations of one instance, in declaration order, keeping keyed
/// and operator state apart (they are separate namespaces in the host).
#[derive(Debug, Default, Clone)]
pub(crate) struct Declarations {
    states: Vec<DeclaredState>,
}

impl Declarations {
    /// Records `state`, or confirms an identical earlier declaration.
    ///
    /// # Errors
    /// A message naming the state if it was declared otherwise before.
    pub(crate) fn declare(&mut self, state: DeclaredState) -> Result<(), String> {
        let keyed = state.is_keyed();
        match self
            .states
            .iter()
            .find(|s| s.name == state.name && s.is_keyed() == keyed)
        {
            Some(existing) if *existing == state => Ok(()),
            Some(existing) => Err(format!(
                "state `{}` is already declared as {}{}, not as {}{}",
                state.name,
                existing.kind,
                typed(&existing.type_name),
                state.kind,
                typed(&state.type_name),
            )),
            None => {
                self.states.push(state);
                Ok(())
            }
        }
    }

    /// Every declaration so far.
    pub(crate) fn all(&self) -> &[DeclaredState] {
        &self.states
    }
}

fn typed(type_name: &Option<String>) -> String {
    match type_name {
        Some(t) => format!(" of type `{t}`"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, kind: DeclaredKind, type_name: Option<&str>) -> DeclaredState {
        DeclaredState {
            name: name.into(),
            kind,
            type_name: type_name.map(Into::into),
        }
    }

    #[test]
    fn serializes_as_kebab_case_json() {
        let s = state(
            "buffer",
            DeclaredKind::OperatorList {
                redistribution: Redistribution::Union,
            },
            Some("list<int>"),
        );
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"name":"buffer","kind":"operator-list","redistribution":"union","type-name":"list<int>"}"#
        );
        assert_eq!(serde_json::from_str::<DeclaredState>(&json).unwrap(), s);
        let v = state("count", DeclaredKind::Value, None);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"name":"count","kind":"value"}"#);
        assert_eq!(serde_json::from_str::<DeclaredState>(&json).unwrap(), v);
    }

    #[test]
    fn redeclaring_identically_is_fine_and_differently_is_an_error() {
        let mut d = Declarations::default();
        d.declare(state("count", DeclaredKind::Value, Some("int")))
            .unwrap();
        d.declare(state("count", DeclaredKind::Value, Some("int")))
            .unwrap();
        let e = d
            .declare(state("count", DeclaredKind::Map, None))
            .unwrap_err();
        assert_eq!(
            e,
            "state `count` is already declared as value of type `int`, not as map"
        );
        // Operator state is another namespace.
        d.declare(state(
            "count",
            DeclaredKind::OperatorList {
                redistribution: Redistribution::Split,
            },
            None,
        ))
        .unwrap();
        assert_eq!(d.all().len(), 2);
    }
}
