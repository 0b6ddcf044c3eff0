//! dfdaemon's only API right: annotate pods in its namespace (its own, by
//! convention) with the node's integration problems. See `nodes.rs`.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::{Component, Ctx};

const C: Component = Component::Dfdaemon;

pub fn dfdaemon_role(ctx: &Ctx) -> Role {
    Role {
        metadata: ctx.meta(C, ctx.object_name(C)),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into(), "patch".into()],
            ..PolicyRule::default()
        }]),
    }
}

pub fn dfdaemon_role_binding(ctx: &Ctx) -> RoleBinding {
    RoleBinding {
        metadata: ctx.meta(C, ctx.object_name(C)),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: ctx.object_name(C),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ctx.object_name(C),
            namespace: Some(ctx.namespace.clone()),
            ..Subject::default()
        }]),
    }
}
