//! `dragonfly-operator certs`: a cluster CA, or a member certificate signed
//! by one, in the `--tls-dir` layout. For tests, the all-in-one mode and
//! clusters that bring their own certificates; in Kubernetes the operator
//! keeps the CA in a Secret and issues member certificates itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use identity::{Ca, Identity, Role};

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory to write to: ca.crt and ca.key for a CA; ca.crt, tls.crt
    /// and tls.key for a member.
    #[arg(long)]
    pub out: PathBuf,
    /// The CA's common name, or the member's name (a node name is its host id).
    #[arg(long)]
    pub name: String,
    /// Sign a member certificate with the CA in this directory.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// The member's role: node, seed, scheduler or operator.
    #[arg(long, default_value = "node")]
    pub role: String,
    /// Validity, e.g. 24h or 3650d [default: 3650d for a CA, 24h for a member].
    #[arg(long)]
    pub validity: Option<humantime::Duration>,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match &args.ca_dir {
        None => {
            let valid = args
                .validity
                .map(Into::into)
                .unwrap_or(Duration::from_secs(3650 * 86400));
            let ca = Ca::generate(&args.name, valid)?;
            ca.write(&args.out)
                .with_context(|| format!("writing the CA to {}", args.out.display()))?;
            eprintln!(
                "cluster CA {:?} written to {}",
                args.name,
                args.out.display()
            );
        }
        Some(ca_dir) => {
            let ca = Ca::load(ca_dir)
                .with_context(|| format!("reading the CA in {}", ca_dir.display()))?;
            let role: Role = args.role.parse()?;
            let id = Identity::new(role, &args.name)?;
            let valid = args
                .validity
                .map(Into::into)
                .unwrap_or(identity::MEMBER_VALIDITY);
            ca.issue(&id, valid)?
                .write(&args.out)
                .with_context(|| format!("writing the member to {}", args.out.display()))?;
            eprintln!("member {id} written to {}", args.out.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_then_a_member_it_signed() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        run(CertsArgs {
            out: ca_dir.clone(),
            name: "test".into(),
            ca_dir: None,
            role: "node".into(),
            validity: None,
        })
        .unwrap();
        let member = dir.path().join("member");
        run(CertsArgs {
            out: member.clone(),
            name: "node-a".into(),
            ca_dir: Some(ca_dir),
            role: "seed".into(),
            validity: None,
        })
        .unwrap();
        let tls = identity::MemberTls::load(&member).unwrap();
        assert_eq!(tls.identity(), Identity::new(Role::Seed, "node-a").unwrap());
        let bad_role = run(CertsArgs {
            out: dir.path().join("x"),
            name: "n".into(),
            ca_dir: Some(dir.path().join("ca")),
            role: "root".into(),
            validity: None,
        });
        assert!(bad_role.is_err());
    }
}
