//! dfdaemon's only API right: annotate pods in its namespace with the
//! node's integration problems (see `nodes.rs`); the admission policy of
//! the install (`manifests::node_agent_policy`) narrows it to its own pod.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::{Component, Ctx};

const C: Component = Component::Dfdaemon;

pub fn dfdaemon_role(ctx: &Ctx) -> Role {
    Role {
        metadata: ctx.meta(C, ctx.object_name(C)),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["patch".into()],
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
