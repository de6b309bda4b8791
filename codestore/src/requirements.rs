//! `requirements.txt`: pins only (`name==version`), read the same way by
//! the worker (which installs them) and the upload checks of both sides.

use config::worker::parse_pin;

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pin {
    /// Normalized (PEP 503) name.
    pub name: String,
    pub version: String,
}

impl Pin {
    /// The store key and directory name: `<name>-<version>`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }

    pub fn spec(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// Parses `requirements.txt`: pins only, sorted and deduplicated. The
/// error names the line: `requirements.txt:2: "requests>=2" is not pinned: ...`.
pub fn parse_requirements(text: &str) -> Result<Vec<Pin>, String> {
    let mut pins = Vec::new();
    for (n, line) in crate::requirement_lines(text) {
        let (name, version) = parse_pin(line).map_err(|e| format!("requirements.txt:{n}: {e}"))?;
        pins.push(Pin { name, version });
    }
    pins.sort();
    pins.dedup();
    for w in pins.windows(2) {
        if w[0].name == w[1].name {
            return Err(format!(
                "requirements.txt: {} is pinned twice ({} and {})",
                w[0].name, w[0].version, w[1].version
            ));
        }
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_are_pins_only() {
        let pins =
            parse_requirements("# deps\nSix==1.16.0\n\nidna == 3.7  # x\nsix==1.16.0\n").unwrap();
        assert_eq!(
            pins.iter().map(Pin::key).collect::<Vec<_>>(),
            ["idna-3.7", "six-1.16.0"]
        );
        let e = parse_requirements("six==1.16.0\nrequests>=2\n").unwrap_err();
        assert!(
            e.starts_with("requirements.txt:2: \"requests>=2\" is not pinned"),
            "{e}"
        );
        for bad in [
            "six",
            "six==../x",
            "-e .",
            "six==1.0; python_version>'3'",
            "a[b]==1",
        ] {
            assert!(parse_requirements(bad).is_err(), "{bad}");
        }
        assert!(parse_requirements("six==1.0\nsix==2.0").is_err());
        assert_eq!(
            parse_requirements("Zope.Interface==6.0").unwrap()[0].name,
            "zope-interface"
        );
    }
}
