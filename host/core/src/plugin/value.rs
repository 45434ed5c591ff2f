//! State values across the WIT boundary: the `value` variant to and from
//! [`Value`], with `nested` trees carried as pre-order nodes.
//!
//! A guest controls the nodes it sends, so lifting checks every count and
//! bounds the depth: a malformed tree is an error for the guest's hook,
//! never a host panic or stack overflow.

use super::bindings::weir::operator::types;
use crate::state::Value;

/// The deepest nesting accepted from a guest.
pub(crate) const MAX_DEPTH: usize = 64;

/// Converts a guest's value.
///
/// # Errors
/// A `nested` value that is not exactly one well-formed tree of at most
/// [`MAX_DEPTH`] levels.
pub(crate) fn lift(v: types::Value) -> Result<Value, String> {
    Ok(match v {
        types::Value::Boolean(b) => Value::Boolean(b),
        types::Value::Int(i) => Value::Int(i),
        types::Value::Uint(u) => Value::Uint(u),
        types::Value::Float(f) => Value::Float(f),
        types::Value::Text(s) => Value::Text(s),
        types::Value::Bytes(b) => Value::Bytes(b),
        types::Value::Nested(nodes) => {
            let total = nodes.len();
            let mut nodes = nodes.into_iter();
            let tree = lift_tree(&mut nodes, total, 1)?;
            if nodes.len() != 0 {
                return Err(format!(
                    "malformed nested value: {} nodes after the end of the tree",
                    nodes.len()
                ));
            }
            tree
        }
    })
}

/// Converts many guest values, stopping at the first malformed one.
pub(crate) fn lift_all(values: Vec<types::Value>) -> Result<Vec<Value>, String> {
    values.into_iter().map(lift).collect()
}

fn lift_tree(
    nodes: &mut std::vec::IntoIter<types::Node>,
    total: usize,
    depth: usize,
) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "malformed nested value: deeper than {MAX_DEPTH} levels"
        ));
    }
    let Some(node) = nodes.next() else {
        return Err(
            "malformed nested value: a container has fewer children than it declares".into(),
        );
    };
    // A declared count can never exceed the nodes that are left, so a
    // hostile count cannot make the host allocate more than the guest sent.
    let count = |n: usize, per: usize| -> Result<usize, String> {
        if n.saturating_mul(per) > total {
            return Err(format!(
                "malformed nested value: a container declares {n} children in a tree of {total} nodes"
            ));
        }
        Ok(n)
    };
    Ok(match node {
        types::Node::None => Value::None,
        types::Node::Boolean(b) => Value::Boolean(b),
        types::Node::Int(i) => Value::Int(i),
        types::Node::Uint(u) => Value::Uint(u),
        types::Node::Float(f) => Value::Float(f),
        types::Node::Text(s) => Value::Text(s),
        types::Node::Bytes(b) => Value::Bytes(b),
        types::Node::List(n) => {
            let n = count(n as usize, 1)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(lift_tree(nodes, total, depth + 1)?);
            }
            Value::List(items)
        }
        types::Node::Map(n) => {
            let n = count(n as usize, 2)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let k = lift_tree(nodes, total, depth + 1)?;
                let v = lift_tree(nodes, total, depth + 1)?;
                entries.push((k, v));
            }
            Value::Map(entries)
        }
        types::Node::Record(names) => {
            count(names.len(), 1)?;
            let mut fields = Vec::with_capacity(names.len());
            for name in names {
                fields.push((name, lift_tree(nodes, total, depth + 1)?));
            }
            Value::Record(fields)
        }
    })
}

/// Converts a value for a guest.
pub(crate) fn lower(v: Value) -> types::Value {
    match v {
        Value::Boolean(b) => types::Value::Boolean(b),
        Value::Int(i) => types::Value::Int(i),
        Value::Uint(u) => types::Value::Uint(u),
        Value::Float(f) => types::Value::Float(f),
        Value::Text(s) => types::Value::Text(s),
        Value::Bytes(b) => types::Value::Bytes(b),
        tree @ (Value::None | Value::List(_) | Value::Map(_) | Value::Record(_)) => {
            let mut nodes = Vec::new();
            lower_tree(tree, &mut nodes);
            types::Value::Nested(nodes)
        }
    }
}

/// Converts many values for a guest.
pub(crate) fn lower_all(values: Vec<Value>) -> Vec<types::Value> {
    values.into_iter().map(lower).collect()
}

fn lower_tree(v: Value, out: &mut Vec<types::Node>) {
    // Counts fit in u32: every tree was lifted from a guest's list.
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match v {
        Value::None => out.push(types::Node::None),
        Value::Boolean(b) => out.push(types::Node::Boolean(b)),
        Value::Int(i) => out.push(types::Node::Int(i)),
        Value::Uint(u) => out.push(types::Node::Uint(u)),
        Value::Float(f) => out.push(types::Node::Float(f)),
        Value::Text(s) => out.push(types::Node::Text(s)),
        Value::Bytes(b) => out.push(types::Node::Bytes(b)),
        Value::List(items) => {
            out.push(types::Node::List(len(items.len())));
            items.into_iter().for_each(|v| lower_tree(v, out));
        }
        Value::Map(entries) => {
            out.push(types::Node::Map(len(entries.len())));
            for (k, v) in entries {
                lower_tree(k, out);
                lower_tree(v, out);
            }
        }
        Value::Record(fields) => {
            let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
            out.push(types::Node::Record(names));
            values.into_iter().for_each(|v| lower_tree(v, out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use types::Node as N;

    fn nested(nodes: Vec<N>) -> types::Value {
        types::Value::Nested(nodes)
    }

    #[test]
    fn a_tree_round_trips_through_pre_order_nodes() {
        let tree = Value::Record(vec![
            ("count".into(), Value::Int(3)),
            (
                "seen".into(),
                Value::List(vec![Value::Text("a".into()), Value::None]),
            ),
            (
                "by".into(),
                Value::Map(vec![(Value::Uint(1), Value::Float(0.5))]),
            ),
        ]);
        let lowered = lower(tree.clone());
        let types::Value::Nested(nodes) = &lowered else {
            panic!("a record lowers to nested nodes")
        };
        assert_eq!(nodes.len(), 8);
        assert_eq!(lift(lowered).unwrap(), tree);
        // Scalars stay scalars.
        assert!(matches!(lower(Value::Int(1)), types::Value::Int(1)));
    }

    #[test]
    fn malformed_trees_are_errors() {
        let err = lift(nested(vec![N::List(2), N::Int(1)])).unwrap_err();
        assert!(err.contains("fewer children"), "{err}");
        let err = lift(nested(vec![N::Int(1), N::Int(2)])).unwrap_err();
        assert!(err.contains("1 nodes after the end"), "{err}");
        let err = lift(nested(vec![])).unwrap_err();
        assert!(err.contains("fewer children"), "{err}");
        let err = lift(nested(vec![N::Map(u32::MAX)])).unwrap_err();
        assert!(err.contains("declares 4294967295 children"), "{err}");
        let deep = vec![N::List(1); MAX_DEPTH + 1];
        let err = lift(nested(deep)).unwrap_err();
        assert!(err.contains("deeper than 64"), "{err}");
        let mut ok = vec![N::List(1); MAX_DEPTH - 1];
        ok.push(N::None);
        assert!(lift(nested(ok)).is_ok());
    }
}
