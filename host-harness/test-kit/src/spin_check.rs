//! Static proof that the collector deploys to Fermyon Spin unchanged.
//!
//! No Spin runtime can run where we test, so we check what Spin itself would
//! check when it loads the application:
//!
//! * [`SpinWorlds::check_component`]: every import of a built component is
//!   something Spin's host provides — world `spin:up/platform@3.6.0` from the
//!   `spin-sdk` 5.2.0 crate, plus the cron trigger's world
//!   `fermyon:spin-cron/spin-cron@2.0.0` — matched the way wasmtime's linker
//!   matches names and types, and the component exports the cron trigger's
//!   entry point `handle-cron-event` with the trigger's signature.
//! * [`check_manifest`]: `spin.toml` declares, maps and protects every setting
//!   the component reads (`onepassword_collector::config::KEYS`), lets the
//!   component reach exactly its two servers, and wires the cron trigger.
//! * [`check_runtime_config`]: the shape of a `runtime-config.toml`.
//!
//! Findings are [`Problem`]s, one per thing to fix; loading failures (bytes
//! that are not a component, WIT that does not parse) are errors.

use anyhow::{bail, Context};
use onepassword_collector::config;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use wit_parser::decoding::{decode, DecodedWasm};
use wit_parser::{
    Function, FunctionKind, Handle, InterfaceId, Resolve, Type, TypeDefKind, TypeId, TypeOwner, WorldId, WorldItem,
    WorldKey,
};

/// The name of the cron trigger's entry point, exported by the component.
pub const CRON_EXPORT: &str = "handle-cron-event";

/// The component's name in `spin.toml`.
pub const COMPONENT: &str = "collector";

/// Where `cargo build --release --target wasm32-wasip2 -p onepassword-collector`
/// leaves the component, relative to the workspace root (where `spin.toml` is).
pub const RELEASE_SOURCE: &str = "target/wasm32-wasip2/release/onepassword_collector.wasm";

/// Settings the collector cannot run without. `Config::load` is the authority;
/// the `spin_compat` test checks this list against it.
pub const REQUIRED_KEYS: &[&str] = &["base_url", "token", "devo_url", "devo_domain", "devo_token"];

/// Optional settings with no static default (the collector computes one, or
/// the feature is off when unset). A Spin variable always has a value once it
/// is mapped, and an empty one fails every tick (error id 3), so `spin.toml`
/// leaves these unmapped and says in a comment how to add them.
pub const OPTIONAL_UNMAPPED_KEYS: &[&str] =
    &["start_time_value", "max_pages_per_tick", "obfuscate_fields", "obfuscation_key"];

/// Settings holding the base URLs the component calls: the only hosts it may
/// reach.
pub const OUTBOUND_URL_KEYS: &[&str] = &["base_url", "devo_url"];

/// Something to fix: `subject` names it (an interface, a function, a variable,
/// a manifest key), `message` says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub subject: String,
    pub message: String,
}

impl Problem {
    fn new(subject: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { subject: subject.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

// ---------------------------------------------------------------------------
// Component against Spin's worlds
// ---------------------------------------------------------------------------

/// What the component imports and what in Spin provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The import as the component names it, e.g. `wasi:cli/environment@0.2.3`.
    pub import: String,
    /// The Spin interface wasmtime would link it to, e.g.
    /// `wasi:cli/environment@0.2.6`; `None` when Spin has nothing for it.
    pub provider: Option<String>,
}

/// The outcome of [`SpinWorlds::check_component`].
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The Spin worlds checked against, e.g. `spin:up/platform@3.6.0`.
    pub worlds: Vec<String>,
    pub imports: Vec<Link>,
    /// The component's exports, by name.
    pub exports: Vec<String>,
    pub problems: Vec<Problem>,
}

impl Report {
    /// True when Spin can instantiate the component and call its cron export.
    pub fn is_compatible(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "checked against {}", self.worlds.join(" + "))?;
        for link in &self.imports {
            match &link.provider {
                Some(p) if *p == link.import => writeln!(f, "  import {}: provided", link.import)?,
                Some(p) => writeln!(f, "  import {}: provided as {p}", link.import)?,
                None => writeln!(f, "  import {}: NOT provided", link.import)?,
            }
        }
        for export in &self.exports {
            writeln!(f, "  export {export}")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "compatible")
        } else {
            for p in &self.problems {
                writeln!(f, "problem: {p}")?;
            }
            writeln!(f, "{} problem(s)", self.problems.len())
        }
    }
}

/// Spin's host world and the cron trigger's world, parsed once.
pub struct SpinWorlds {
    resolve: Resolve,
    platform: WorldId,
    cron: WorldId,
}

/// Where a Spin world makes an interface available.
struct Offer {
    iface: InterfaceId,
    version: Option<semver::Version>,
}

impl SpinWorlds {
    /// Parses Spin's WIT (a directory holding `world.wit` with world
    /// `platform`, and `deps/`, as shipped in the `spin-sdk` crate) and the
    /// cron trigger's WIT (a directory holding world `spin-cron`).
    ///
    /// Items gated with `@unstable(feature = ...)` (Spin's WASI 0.3 release
    /// candidates) are left out, consistently for every world: they are
    /// unstable previews, and a component meant for any Spin 3.x must not
    /// rely on them.
    pub fn load(spin_wit_dir: &Path, cron_wit_dir: &Path) -> anyhow::Result<SpinWorlds> {
        // Enable no `@unstable` feature, explicitly (it is also the default).
        let mut resolve = Resolve { all_features: false, features: Default::default(), ..Resolve::default() };
        let (spin_pkg, _) = resolve
            .push_dir(spin_wit_dir)
            .with_context(|| format!("reading Spin's WIT in {}", spin_wit_dir.display()))?;
        let platform =
            resolve.select_world(&[spin_pkg], Some("platform")).context("Spin's WIT has no world `platform`")?;
        let (cron_pkg, _) = resolve
            .push_dir(cron_wit_dir)
            .with_context(|| format!("reading the cron trigger's WIT in {}", cron_wit_dir.display()))?;
        let cron = resolve
            .select_world(&[cron_pkg], Some("spin-cron"))
            .context("the cron trigger's WIT has no world `spin-cron`")?;
        Ok(SpinWorlds { resolve, platform, cron })
    }

    /// `spin:up/platform@3.6.0` and `fermyon:spin-cron/spin-cron@2.0.0`.
    pub fn world_names(&self) -> Vec<String> {
        [self.platform, self.cron].iter().map(|w| world_name(&self.resolve, *w)).collect()
    }

    /// Checks a component (the bytes of a `.wasm` file) against Spin.
    pub fn check_component(&self, component_wasm: &[u8]) -> anyhow::Result<Report> {
        let (comp, world) = match decode(component_wasm).context("decoding the component")? {
            DecodedWasm::Component(resolve, world) => (resolve, world),
            DecodedWasm::WitPackage(..) => bail!("this is a WIT package, not a component"),
        };
        let mut report = Report { worlds: self.world_names(), ..Report::default() };
        let offers = self.offers();
        let spin_functions = self.top_level_functions();

        for (key, item) in &comp.worlds[world].imports {
            let name = comp.name_world_key(key);
            match item {
                WorldItem::Interface { id, .. } => {
                    let provider = self.provider_for(&comp, *id, key, &offers);
                    match provider {
                        Some(spin_iface) => {
                            let cmp = Compare { a: &comp, b: &self.resolve };
                            cmp.interface(&name, *id, spin_iface, &mut report.problems);
                            report
                                .imports
                                .push(Link { import: name, provider: Some(interface_name(&self.resolve, spin_iface)) });
                        }
                        None => {
                            report
                                .problems
                                .push(Problem::new(&name, self.missing_interface_message(&comp, *id, &offers)));
                            report.imports.push(Link { import: name, provider: None });
                        }
                    }
                }
                WorldItem::Function(f) => {
                    let provider = spin_functions.get(f.name.as_str());
                    match provider {
                        Some(spin_f) => {
                            let cmp = Compare { a: &comp, b: &self.resolve };
                            if let Err(why) = cmp.function(f, spin_f) {
                                report.problems.push(Problem::new(&name, why));
                            }
                        }
                        None => report.problems.push(Problem::new(
                            &name,
                            "the component imports this function at top level; Spin provides no such import",
                        )),
                    }
                    report.imports.push(Link { import: name.clone(), provider: provider.map(|_| name) });
                }
                WorldItem::Type { id, .. } => {
                    // A `use` of an interface's type is satisfied by importing
                    // that interface (checked above); anything else would be a
                    // bare type import, which no Spin world has.
                    if !is_use_of_interface_type(&comp, *id) {
                        report.problems.push(Problem::new(
                            &name,
                            "the component imports this type at top level; Spin provides no such import",
                        ));
                    }
                }
            }
        }

        for (key, _) in &comp.worlds[world].exports {
            report.exports.push(comp.name_world_key(key));
        }
        self.check_cron_export(&comp, world, &mut report.problems);
        Ok(report)
    }

    /// Every interface the two worlds import, by `namespace:package/interface`
    /// (or plain name), with its version.
    fn offers(&self) -> HashMap<String, Vec<Offer>> {
        let mut offers: HashMap<String, Vec<Offer>> = HashMap::new();
        for world in [self.platform, self.cron] {
            for (key, item) in &self.resolve.worlds[world].imports {
                if let WorldItem::Interface { id, .. } = item {
                    let (unversioned, version) = split_interface_name(&self.resolve, *id, key);
                    let list = offers.entry(unversioned).or_default();
                    if !list.iter().any(|o| o.iface == *id) {
                        list.push(Offer { iface: *id, version });
                    }
                }
            }
        }
        offers
    }

    fn top_level_functions(&self) -> HashMap<&str, &Function> {
        let mut functions = HashMap::new();
        for world in [self.platform, self.cron] {
            for item in self.resolve.worlds[world].imports.values() {
                if let WorldItem::Function(f) = item {
                    functions.insert(f.name.as_str(), f);
                }
            }
        }
        functions
    }

    /// The interface wasmtime would link the import to: the same version if
    /// Spin has it, otherwise the newest one of the same semver line (same
    /// major, or same minor for `0.x`; pre-releases only match exactly).
    fn provider_for(
        &self,
        comp: &Resolve,
        iface: InterfaceId,
        key: &WorldKey,
        offers: &HashMap<String, Vec<Offer>>,
    ) -> Option<InterfaceId> {
        let (unversioned, version) = split_interface_name(comp, iface, key);
        let candidates = offers.get(&unversioned)?;
        if let Some(exact) = candidates.iter().find(|o| o.version == version) {
            return Some(exact.iface);
        }
        let line = version.as_ref().and_then(semver_line)?;
        candidates
            .iter()
            .filter(|o| o.version.as_ref().and_then(semver_line).as_deref() == Some(line.as_str()))
            .max_by(|a, b| a.version.cmp(&b.version))
            .map(|o| o.iface)
    }

    fn missing_interface_message(
        &self,
        comp: &Resolve,
        iface: InterfaceId,
        offers: &HashMap<String, Vec<Offer>>,
    ) -> String {
        let key = WorldKey::Interface(iface);
        let (unversioned, _) = split_interface_name(comp, iface, &key);
        let worlds = self.world_names().join(" or ");
        match offers.get(&unversioned) {
            Some(others) => {
                let mut versions: Vec<String> = others.iter().map(|o| interface_name(&self.resolve, o.iface)).collect();
                versions.sort();
                format!(
                    "not provided by {worlds}: Spin has only {} (a different, incompatible version)",
                    versions.join(", ")
                )
            }
            None => format!("not provided by {worlds}: Spin has no interface of that name"),
        }
    }

    fn check_cron_export(&self, comp: &Resolve, world: WorldId, problems: &mut Vec<Problem>) {
        let expected = self.resolve.worlds[self.cron].exports.iter().find_map(|(key, item)| match (key, item) {
            (WorldKey::Name(n), WorldItem::Function(f)) if n == CRON_EXPORT => Some(f),
            _ => None,
        });
        let Some(expected) = expected else {
            problems.push(Problem::new(
                CRON_EXPORT,
                "the cron trigger's world does not export it: wrong WIT given for the cron trigger",
            ));
            return;
        };
        let found = comp.worlds[world].exports.iter().find_map(|(key, item)| match (key, item) {
            (WorldKey::Name(n), WorldItem::Function(f)) if n == CRON_EXPORT => Some(f),
            _ => None,
        });
        match found {
            None => problems.push(Problem::new(
                CRON_EXPORT,
                format!(
                    "the component does not export it; the cron trigger calls `{CRON_EXPORT}: {}`",
                    show_function(&self.resolve, expected)
                ),
            )),
            Some(f) => {
                let cmp = Compare { a: comp, b: &self.resolve };
                if let Err(why) = cmp.function(f, expected) {
                    problems.push(Problem::new(
                        CRON_EXPORT,
                        format!(
                            "exported as `{}` but the cron trigger calls `{}`: {why}",
                            show_function(comp, f),
                            show_function(&self.resolve, expected)
                        ),
                    ));
                }
            }
        }
    }
}

/// Convenience for callers that check one component: loads both worlds and
/// checks `component_wasm` against them.
pub fn check_component_against_spin(
    component_wasm: &[u8],
    spin_wit_dir: &Path,
    cron_wit_dir: &Path,
) -> anyhow::Result<Report> {
    SpinWorlds::load(spin_wit_dir, cron_wit_dir)?.check_component(component_wasm)
}

/// The part of a version wasmtime's linker treats as "compatible": for
/// `0.x.y` with `x > 0` it is `0.x`, for `n.x.y` with `n > 0` it is `n`.
/// Pre-releases and `0.0.y` have none (only an exact version links).
fn semver_line(v: &semver::Version) -> Option<String> {
    if !v.pre.is_empty() {
        None
    } else if v.major > 0 {
        Some(v.major.to_string())
    } else if v.minor > 0 {
        Some(format!("0.{}", v.minor))
    } else {
        None
    }
}

fn world_name(resolve: &Resolve, world: WorldId) -> String {
    let w = &resolve.worlds[world];
    match w.package {
        Some(pkg) => {
            let p = &resolve.packages[pkg].name;
            match &p.version {
                Some(v) => format!("{}:{}/{}@{v}", p.namespace, p.name, w.name),
                None => format!("{}:{}/{}", p.namespace, p.name, w.name),
            }
        }
        None => w.name.clone(),
    }
}

fn interface_name(resolve: &Resolve, iface: InterfaceId) -> String {
    resolve.id_of(iface).unwrap_or_else(|| resolve.interfaces[iface].name.clone().unwrap_or_default())
}

/// `("wasi:cli/environment", Some(0.2.6))`, or the plain name for an
/// interface imported under a name of its own.
fn split_interface_name(resolve: &Resolve, iface: InterfaceId, key: &WorldKey) -> (String, Option<semver::Version>) {
    let i = &resolve.interfaces[iface];
    match (key, i.package, &i.name) {
        (WorldKey::Interface(_), Some(pkg), Some(name)) => {
            let p = &resolve.packages[pkg].name;
            (format!("{}:{}/{name}", p.namespace, p.name), p.version.clone())
        }
        _ => (resolve.name_world_key(key), None),
    }
}

fn is_use_of_interface_type(resolve: &Resolve, id: TypeId) -> bool {
    match &resolve.types[id].kind {
        TypeDefKind::Type(Type::Id(other)) => {
            matches!(resolve.types[*other].owner, TypeOwner::Interface(_)) || is_use_of_interface_type(resolve, *other)
        }
        _ => false,
    }
}

/// Structural comparison of WIT items from two `Resolve`s: `a` (the
/// component's) against `b` (Spin's). Names of records, variants and other
/// plain types do not matter to the linker; resources are compared by where
/// they are defined (package and semver line, interface, name).
struct Compare<'a> {
    a: &'a Resolve,
    b: &'a Resolve,
}

impl Compare<'_> {
    /// Every function and type the component uses from interface `a_iface`
    /// must exist in Spin's `b_iface` with the same type.
    fn interface(&self, name: &str, a_iface: InterfaceId, b_iface: InterfaceId, problems: &mut Vec<Problem>) {
        let a = &self.a.interfaces[a_iface];
        let b = &self.b.interfaces[b_iface];
        for (tname, a_ty) in &a.types {
            match b.types.get(tname) {
                None => problems.push(Problem::new(
                    format!("{name}#{tname}"),
                    format!("Spin's {} has no type `{tname}`", interface_name(self.b, b_iface)),
                )),
                Some(b_ty) => {
                    if let Err(why) = self.types(&Type::Id(*a_ty), &Type::Id(*b_ty)) {
                        problems
                            .push(Problem::new(format!("{name}#{tname}"), format!("type differs from Spin's: {why}")));
                    }
                }
            }
        }
        for (fname, a_f) in &a.functions {
            match b.functions.get(fname) {
                None => problems.push(Problem::new(
                    format!("{name}#{fname}"),
                    format!(
                        "the component imports function `{fname}` but Spin's {} has no such function",
                        interface_name(self.b, b_iface)
                    ),
                )),
                Some(b_f) => {
                    if let Err(why) = self.function(a_f, b_f) {
                        problems.push(Problem::new(
                            format!("{name}#{fname}"),
                            format!(
                                "the component expects `{}` but Spin provides `{}`: {why}",
                                show_function(self.a, a_f),
                                show_function(self.b, b_f)
                            ),
                        ));
                    }
                }
            }
        }
    }

    fn function(&self, a: &Function, b: &Function) -> Result<(), String> {
        let (ka, kb) = (kind_name(&a.kind), kind_name(&b.kind));
        if ka != kb {
            return Err(format!("{ka} here, {kb} in the reference"));
        }
        if a.params.len() != b.params.len() {
            return Err(format!("{} parameter(s) here, {} in the reference", a.params.len(), b.params.len()));
        }
        for (i, (pa, pb)) in a.params.iter().zip(&b.params).enumerate() {
            self.types(&pa.ty, &pb.ty).map_err(|why| format!("parameter {} (`{}`): {why}", i + 1, pa.name))?;
        }
        match (&a.result, &b.result) {
            (None, None) => Ok(()),
            (Some(ra), Some(rb)) => self.types(ra, rb).map_err(|why| format!("result: {why}")),
            (None, Some(_)) => Err("no result here, a result in the reference".into()),
            (Some(_), None) => Err("a result here, none in the reference".into()),
        }
    }

    fn types(&self, a: &Type, b: &Type) -> Result<(), String> {
        let (a, b) = (peel(self.a, *a), peel(self.b, *b));
        let mismatch = || Err(format!("`{}` vs `{}`", show_type(self.a, &a), show_type(self.b, &b)));
        let (ia, ib) = match (a, b) {
            (Type::Id(ia), Type::Id(ib)) => (ia, ib),
            (Type::Id(_), _) | (_, Type::Id(_)) => return mismatch(),
            (pa, pb) => return if pa == pb { Ok(()) } else { mismatch() },
        };
        let (da, db) = (&self.a.types[ia].kind, &self.b.types[ib].kind);
        let opt = |x: &Option<Type>, y: &Option<Type>| -> Result<(), String> {
            match (x, y) {
                (None, None) => Ok(()),
                (Some(x), Some(y)) => self.types(x, y),
                _ => Err(format!("`{}` vs `{}`", show_type(self.a, &a), show_type(self.b, &b))),
            }
        };
        match (da, db) {
            (TypeDefKind::Record(ra), TypeDefKind::Record(rb)) => {
                let na: Vec<&str> = ra.fields.iter().map(|f| f.name.as_str()).collect();
                let nb: Vec<&str> = rb.fields.iter().map(|f| f.name.as_str()).collect();
                if na != nb {
                    return Err(format!("record fields {na:?} vs {nb:?}"));
                }
                for (fa, fb) in ra.fields.iter().zip(&rb.fields) {
                    self.types(&fa.ty, &fb.ty).map_err(|why| format!("field `{}`: {why}", fa.name))?;
                }
                Ok(())
            }
            (TypeDefKind::Variant(va), TypeDefKind::Variant(vb)) => {
                let na: Vec<&str> = va.cases.iter().map(|c| c.name.as_str()).collect();
                let nb: Vec<&str> = vb.cases.iter().map(|c| c.name.as_str()).collect();
                if na != nb {
                    return Err(format!("variant cases {na:?} vs {nb:?}"));
                }
                for (ca, cb) in va.cases.iter().zip(&vb.cases) {
                    opt(&ca.ty, &cb.ty).map_err(|why| format!("case `{}`: {why}", ca.name))?;
                }
                Ok(())
            }
            (TypeDefKind::Enum(ea), TypeDefKind::Enum(eb)) => {
                let na: Vec<&str> = ea.cases.iter().map(|c| c.name.as_str()).collect();
                let nb: Vec<&str> = eb.cases.iter().map(|c| c.name.as_str()).collect();
                if na == nb {
                    Ok(())
                } else {
                    Err(format!("enum cases {na:?} vs {nb:?}"))
                }
            }
            (TypeDefKind::Flags(fa), TypeDefKind::Flags(fb)) => {
                let na: Vec<&str> = fa.flags.iter().map(|f| f.name.as_str()).collect();
                let nb: Vec<&str> = fb.flags.iter().map(|f| f.name.as_str()).collect();
                if na == nb {
                    Ok(())
                } else {
                    Err(format!("flags {na:?} vs {nb:?}"))
                }
            }
            (TypeDefKind::Tuple(ta), TypeDefKind::Tuple(tb)) => {
                if ta.types.len() != tb.types.len() {
                    return mismatch();
                }
                for (x, y) in ta.types.iter().zip(&tb.types) {
                    self.types(x, y)?;
                }
                Ok(())
            }
            (TypeDefKind::Option(x), TypeDefKind::Option(y)) | (TypeDefKind::List(x), TypeDefKind::List(y)) => {
                self.types(x, y)
            }
            (TypeDefKind::FixedLengthList(x, n), TypeDefKind::FixedLengthList(y, m)) => {
                if n != m {
                    return mismatch();
                }
                self.types(x, y)
            }
            (TypeDefKind::Map(ka, va), TypeDefKind::Map(kb, vb)) => {
                self.types(ka, kb)?;
                self.types(va, vb)
            }
            (TypeDefKind::Result(ra), TypeDefKind::Result(rb)) => {
                opt(&ra.ok, &rb.ok).map_err(|why| format!("ok: {why}"))?;
                opt(&ra.err, &rb.err).map_err(|why| format!("error: {why}"))
            }
            (TypeDefKind::Future(x), TypeDefKind::Future(y)) | (TypeDefKind::Stream(x), TypeDefKind::Stream(y)) => {
                opt(x, y)
            }
            (TypeDefKind::Handle(ha), TypeDefKind::Handle(hb)) => match (ha, hb) {
                (Handle::Own(x), Handle::Own(y)) | (Handle::Borrow(x), Handle::Borrow(y)) => self.resources(*x, *y),
                _ => mismatch(),
            },
            (TypeDefKind::Resource, TypeDefKind::Resource) => self.resources(ia, ib),
            _ => mismatch(),
        }
    }

    fn resources(&self, a: TypeId, b: TypeId) -> Result<(), String> {
        let (ra, rb) = (resource_identity(self.a, a), resource_identity(self.b, b));
        if ra.1 == rb.1 {
            Ok(())
        } else {
            Err(format!("resource {} vs {}", ra.0, rb.0))
        }
    }
}

/// Follows `type a = b` aliases down to the defining type.
fn peel(resolve: &Resolve, mut ty: Type) -> Type {
    while let Type::Id(id) = ty {
        match &resolve.types[id].kind {
            TypeDefKind::Type(inner) => ty = *inner,
            _ => break,
        }
    }
    ty
}

/// Where a resource is defined, for comparing across two `Resolve`s: a display
/// name and a key with the version reduced to its semver line.
fn resource_identity(resolve: &Resolve, id: TypeId) -> (String, String) {
    let id = match peel(resolve, Type::Id(id)) {
        Type::Id(id) => id,
        _ => id,
    };
    let def = &resolve.types[id];
    let name = def.name.clone().unwrap_or_default();
    match def.owner {
        TypeOwner::Interface(iface) => {
            let i = &resolve.interfaces[iface];
            let iname = i.name.clone().unwrap_or_default();
            match i.package {
                Some(pkg) => {
                    let p = &resolve.packages[pkg].name;
                    let line = match &p.version {
                        Some(v) => semver_line(v).unwrap_or_else(|| v.to_string()),
                        None => String::new(),
                    };
                    (
                        format!("{}.{name}", interface_name(resolve, iface)),
                        format!("{}:{}/{iname}@{line}.{name}", p.namespace, p.name),
                    )
                }
                None => (format!("{iname}.{name}"), format!("{iname}.{name}")),
            }
        }
        _ => (name.clone(), name),
    }
}

fn kind_name(kind: &FunctionKind) -> &'static str {
    match kind {
        FunctionKind::Freestanding => "a function",
        FunctionKind::AsyncFreestanding => "an async function",
        FunctionKind::Method(_) => "a method",
        FunctionKind::AsyncMethod(_) => "an async method",
        FunctionKind::Static(_) => "a static function",
        FunctionKind::AsyncStatic(_) => "an async static function",
        FunctionKind::Constructor(_) => "a constructor",
    }
}

/// A function's type in WIT-like text, for messages.
fn show_function(resolve: &Resolve, f: &Function) -> String {
    let params: Vec<String> = f.params.iter().map(|p| format!("{}: {}", p.name, show_type(resolve, &p.ty))).collect();
    let mut s = format!("func({})", params.join(", "));
    if let Some(r) = &f.result {
        s.push_str(" -> ");
        s.push_str(&show_type(resolve, r));
    }
    s
}

/// A type in WIT-like text: named types by name, anonymous ones spelled out.
fn show_type(resolve: &Resolve, ty: &Type) -> String {
    let id = match ty {
        Type::Bool => return "bool".into(),
        Type::U8 => return "u8".into(),
        Type::U16 => return "u16".into(),
        Type::U32 => return "u32".into(),
        Type::U64 => return "u64".into(),
        Type::S8 => return "s8".into(),
        Type::S16 => return "s16".into(),
        Type::S32 => return "s32".into(),
        Type::S64 => return "s64".into(),
        Type::F32 => return "f32".into(),
        Type::F64 => return "f64".into(),
        Type::Char => return "char".into(),
        Type::String => return "string".into(),
        Type::ErrorContext => return "error-context".into(),
        Type::Id(id) => *id,
    };
    let def = &resolve.types[id];
    if let Some(name) = &def.name {
        return name.clone();
    }
    let opt = |t: &Option<Type>| t.as_ref().map_or("_".to_string(), |t| show_type(resolve, t));
    match &def.kind {
        TypeDefKind::Option(t) => format!("option<{}>", show_type(resolve, t)),
        TypeDefKind::List(t) => format!("list<{}>", show_type(resolve, t)),
        TypeDefKind::FixedLengthList(t, n) => format!("list<{}, {n}>", show_type(resolve, t)),
        TypeDefKind::Map(k, v) => format!("map<{}, {}>", show_type(resolve, k), show_type(resolve, v)),
        TypeDefKind::Result(r) => format!("result<{}, {}>", opt(&r.ok), opt(&r.err)),
        TypeDefKind::Tuple(t) => {
            format!("tuple<{}>", t.types.iter().map(|t| show_type(resolve, t)).collect::<Vec<_>>().join(", "))
        }
        TypeDefKind::Handle(Handle::Own(r)) => show_type(resolve, &Type::Id(*r)),
        TypeDefKind::Handle(Handle::Borrow(r)) => format!("borrow<{}>", show_type(resolve, &Type::Id(*r))),
        TypeDefKind::Future(t) => format!("future<{}>", opt(t)),
        TypeDefKind::Stream(t) => format!("stream<{}>", opt(t)),
        TypeDefKind::Type(t) => show_type(resolve, t),
        TypeDefKind::Record(r) => format!(
            "record {{ {} }}",
            r.fields
                .iter()
                .map(|f| format!("{}: {}", f.name, show_type(resolve, &f.ty)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TypeDefKind::Variant(v) => format!(
            "variant {{ {} }}",
            v.cases
                .iter()
                .map(|c| match &c.ty {
                    Some(t) => format!("{}({})", c.name, show_type(resolve, t)),
                    None => c.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.as_str().to_string(),
    }
}

// ---------------------------------------------------------------------------
// spin.toml
// ---------------------------------------------------------------------------

/// What a `spin.toml` for the collector must satisfy. [`ManifestRules::collector`]
/// gives the rules for this repository; a test or a later command may vary them.
#[derive(Clone, Debug)]
pub struct ManifestRules<'a> {
    pub component: &'a str,
    pub source: &'a str,
    /// Every setting the component reads.
    pub keys: &'a [&'a str],
    pub secret_keys: &'a [&'a str],
    pub required_keys: &'a [&'a str],
    /// Keys that may stay unmapped; each must be mentioned in a comment.
    pub optional_unmapped: &'a [&'a str],
    /// Keys whose URLs make up `allowed_outbound_hosts`, exactly.
    pub outbound_url_keys: &'a [&'a str],
    pub key_value_store: &'a str,
}

impl ManifestRules<'static> {
    pub fn collector() -> ManifestRules<'static> {
        ManifestRules {
            component: COMPONENT,
            source: RELEASE_SOURCE,
            keys: config::KEYS,
            secret_keys: config::SECRET_KEYS,
            required_keys: REQUIRED_KEYS,
            optional_unmapped: OPTIONAL_UNMAPPED_KEYS,
            outbound_url_keys: OUTBOUND_URL_KEYS,
            key_value_store: "default",
        }
    }
}

/// Checks `spin.toml` against [`ManifestRules::collector`].
pub fn check_manifest(toml_text: &str) -> Vec<Problem> {
    check_manifest_with(toml_text, &ManifestRules::collector())
}

/// An application variable as declared in `[variables]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppVariable {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

/// Checks `spin.toml` against `rules`.
pub fn check_manifest_with(toml_text: &str, rules: &ManifestRules) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |subject: &str, message: String| problems.push(Problem::new(subject, message));
    let doc: toml::Table = match toml_text.parse() {
        Ok(doc) => doc,
        Err(e) => return vec![Problem::new("spin.toml", format!("not valid TOML: {e}"))],
    };

    if doc.get("spin_manifest_version").and_then(|v| v.as_integer()) != Some(2) {
        problem("spin_manifest_version", "must be 2 (manifest format v2)".into());
    }
    if doc.get("application").and_then(|a| a.get("name")).and_then(|n| n.as_str()).is_none() {
        problem("application.name", "missing".into());
    }

    // [variables]
    let (app_vars, var_problems) = app_variables(&doc);
    for p in var_problems {
        problem(&p.subject, p.message);
    }

    // [component.NAME]
    let comp_path = format!("component.{}", rules.component);
    let Some(component) = doc.get("component").and_then(|c| c.get(rules.component)).and_then(|c| c.as_table()) else {
        problem(&comp_path, "missing: the collector's component is not declared".into());
        return problems;
    };

    match component.get("source").and_then(|s| s.as_str()) {
        Some(s) if s == rules.source => {}
        Some(s) => {
            problem(&format!("{comp_path}.source"), format!("is {s:?}; the release build is {:?}", rules.source))
        }
        None => problem(&format!("{comp_path}.source"), format!("missing; the release build is {:?}", rules.source)),
    }
    match component.get("build").and_then(|b| b.get("command")).and_then(|c| c.as_str()) {
        Some(cmd) if cmd.contains("cargo build") && cmd.contains("--release") && cmd.contains("wasm32-wasip2") => {}
        _ => problem(
            &format!("{comp_path}.build.command"),
            "must build the release component: cargo build --release --target wasm32-wasip2 ...".into(),
        ),
    }
    let stores = string_list(component.get("key_value_stores"));
    if !stores.iter().any(|s| s == rules.key_value_store) {
        problem(
            &format!("{comp_path}.key_value_stores"),
            format!("must include {:?}: the component keeps its checkpoints there", rules.key_value_store),
        );
    }

    // [component.NAME.variables]: component key -> template
    let mut mapped: BTreeMap<String, Vec<TemplatePart>> = BTreeMap::new();
    let comp_vars = component.get("variables").and_then(|v| v.as_table());
    for (key, value) in comp_vars.into_iter().flatten() {
        let subject = format!("{comp_path}.variables.{key}");
        if let Err(why) = check_snake_id(key) {
            problem(&subject, format!("not a valid Spin variable name: {why}"));
        }
        if !rules.keys.contains(&key.as_str()) {
            problem(&subject, "the component never reads this key (not in config::KEYS)".into());
        }
        let Some(text) = value.as_str() else {
            problem(&subject, "must be a string".into());
            continue;
        };
        match parse_template(text) {
            Ok(parts) => {
                for var in template_vars(&parts) {
                    if !app_vars.contains_key(var) {
                        problem(&subject, format!("refers to {{{{ {var} }}}}, which [variables] does not declare"));
                    }
                }
                mapped.insert(key.clone(), parts);
            }
            Err(why) => problem(&subject, format!("bad template {text:?}: {why}")),
        }
    }

    // Every key the component reads is mapped, or is a documented exception.
    for key in rules.keys {
        let subject = format!("{comp_path}.variables.{key}");
        let documented = rules.optional_unmapped.contains(key);
        match mapped.get(*key) {
            None if documented => {
                if !mentioned_in_comment(toml_text, key) {
                    problem(
                        &subject,
                        "left unmapped on purpose, but no comment in spin.toml says how to set it".into(),
                    );
                }
            }
            None => problem(
                &subject,
                format!(
                    "the component reads {key:?} but spin.toml does not map it: declare an application \
                     variable{} and map it, or — for an optional key with no static default — list it in \
                     spin_check::OPTIONAL_UNMAPPED_KEYS and explain in spin.toml how to add it",
                    if rules.secret_keys.contains(key) { " with `secret = true`" } else { "" }
                ),
            ),
            Some(parts) => {
                let vars = template_vars(parts);
                let declared: Vec<&AppVariable> = vars.iter().filter_map(|v| app_vars.get(*v)).collect();
                if rules.secret_keys.contains(key) && declared.iter().any(|v| !v.secret) {
                    problem(
                        &subject,
                        "holds a secret: the application variable it comes from needs `secret = true`".into(),
                    );
                }
                let is_required = rules.required_keys.contains(key);
                if is_required && !declared.iter().any(|v| v.required) {
                    problem(
                        &subject,
                        "the collector cannot run without it: its application variable needs `required = true`".into(),
                    );
                }
                if !is_required && declared.iter().any(|v| v.required) {
                    problem(
                        &subject,
                        "optional for the collector: give its application variable the collector's default instead of `required = true`"
                            .into(),
                    );
                }
                if let Some(value) = resolve_defaults(parts, &app_vars) {
                    if value.trim().is_empty() {
                        problem(
                            &subject,
                            "resolves to an empty string, which fails every tick (error id 3); leave the key unmapped instead"
                                .into(),
                        );
                    }
                }
            }
        }
    }
    for key in rules.optional_unmapped {
        if !rules.keys.contains(key) {
            problem(
                &format!("spin_check::OPTIONAL_UNMAPPED_KEYS.{key}"),
                "not a key the component reads any more: remove it from the list".into(),
            );
        }
        if rules.required_keys.contains(key) {
            problem(&format!("spin_check::OPTIONAL_UNMAPPED_KEYS.{key}"), "a required key cannot stay unmapped".into());
        }
    }

    // allowed_outbound_hosts: exactly the URLs of the outbound keys.
    let hosts_subject = format!("{comp_path}.allowed_outbound_hosts");
    let mut covered = BTreeSet::new();
    for entry in string_list(component.get("allowed_outbound_hosts")) {
        let var = match parse_template(&entry) {
            Ok(parts) => match parts.as_slice() {
                [TemplatePart::Var(v)] => Some(v.clone()),
                _ => None,
            },
            Err(_) => None,
        };
        let Some(var) = var else {
            problem(
                &hosts_subject,
                format!(
                    "entry {entry:?} is not one of the collector's URL settings; allowed hosts must be exactly {}",
                    rules.outbound_url_keys.iter().map(|k| format!("{{{{ {k} }}}}")).collect::<Vec<_>>().join(" and ")
                ),
            );
            continue;
        };
        let keys: Vec<&String> = mapped
            .iter()
            .filter(|(_, parts)| matches!(parts.as_slice(), [TemplatePart::Var(v)] if *v == var))
            .map(|(k, _)| k)
            .filter(|k| rules.outbound_url_keys.contains(&k.as_str()))
            .collect();
        if keys.is_empty() {
            problem(&hosts_subject, format!("entry {entry:?} grants a host the component is not configured to call"));
        }
        covered.extend(keys.into_iter().cloned());
        if let Some(default) = app_vars.get(&var).and_then(|v| v.default.as_deref()) {
            if let Err(why) = spin_allowed_host(default) {
                problem(
                    &hosts_subject,
                    format!("entry {entry:?} with the default {default:?} is refused by Spin: {why}"),
                );
            }
        }
    }
    for key in rules.outbound_url_keys {
        if !covered.contains(*key) {
            problem(&hosts_subject, format!("must allow the URL in {key:?}, or every request to it is refused"));
        }
    }

    // [[trigger.cron]]
    let triggers = doc.get("trigger").and_then(|t| t.get("cron")).and_then(|c| c.as_array());
    let mut ours = 0;
    for (i, trigger) in triggers.into_iter().flatten().enumerate() {
        let subject = format!("trigger.cron[{i}]");
        if trigger.get("component").and_then(|c| c.as_str()) != Some(rules.component) {
            continue;
        }
        ours += 1;
        match trigger.get("cron_expression").and_then(|c| c.as_str()) {
            Some(expr) => {
                if let Err(e) = host_harness::schedule::parse(expr) {
                    problem(&format!("{subject}.cron_expression"), format!("{expr:?}: {e}"));
                }
            }
            None => problem(&format!("{subject}.cron_expression"), "missing".into()),
        }
    }
    if ours == 0 {
        problem("trigger.cron", format!("no [[trigger.cron]] names component {:?}", rules.component));
    }
    problems
}

/// The application variables declared in `[variables]`, and what is wrong
/// with their declarations (a variable with a problem is still returned, so
/// one mistake does not hide the rest).
pub fn app_variables(doc: &toml::Table) -> (BTreeMap<String, AppVariable>, Vec<Problem>) {
    let mut vars = BTreeMap::new();
    let mut problems = Vec::new();
    let Some(table) = doc.get("variables").and_then(|v| v.as_table()) else {
        return (vars, problems);
    };
    for (name, decl) in table {
        let subject = format!("variables.{name}");
        if let Err(why) = check_snake_id(name) {
            problems.push(Problem::new(&subject, format!("not a valid Spin variable name: {why}")));
        }
        let Some(decl) = decl.as_table() else {
            problems.push(Problem::new(&subject, "must be a table such as { default = \"...\" }"));
            continue;
        };
        let mut var = AppVariable::default();
        for (field, value) in decl {
            let field_subject = format!("{subject}.{field}");
            match (field.as_str(), value) {
                ("default", toml::Value::String(s)) => var.default = Some(s.clone()),
                ("required", toml::Value::Boolean(b)) => var.required = *b,
                ("secret", toml::Value::Boolean(b)) => var.secret = *b,
                ("description", toml::Value::String(_)) => {}
                ("default" | "description", _) => problems.push(Problem::new(field_subject, "must be a string")),
                ("required" | "secret", _) => problems.push(Problem::new(field_subject, "must be true or false")),
                _ => problems.push(Problem::new(field_subject, "unknown field; Spin refuses the manifest")),
            }
        }
        match (var.required, &var.default) {
            (true, Some(_)) => problems.push(Problem::new(&subject, "is both required and defaulted; choose one")),
            (false, None) => problems.push(Problem::new(&subject, "needs a default or `required = true`")),
            _ => {}
        }
        vars.insert(name.clone(), var);
    }
    (vars, problems)
}

/// The value each mapped component variable has when no application variable
/// is set at runtime: its template with application defaults filled in.
/// Variables that are required (no default) are left out.
pub fn manifest_defaults(toml_text: &str, component: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let doc: toml::Table = toml_text.parse().context("spin.toml is not valid TOML")?;
    let (vars, problems) = app_variables(&doc);
    if let Some(p) = problems.first() {
        bail!("spin.toml: {p}");
    }
    let mut out = BTreeMap::new();
    let table =
        doc.get("component").and_then(|c| c.get(component)).and_then(|c| c.get("variables")).and_then(|v| v.as_table());
    for (key, value) in table.into_iter().flatten() {
        let text = value.as_str().with_context(|| format!("variable {key} is not a string"))?;
        let parts = parse_template(text).map_err(|e| anyhow::anyhow!("variable {key}: {e}"))?;
        if let Some(v) = resolve_defaults(&parts, &vars) {
            out.insert(key.clone(), v);
        }
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum TemplatePart {
    Literal(String),
    Var(String),
}

/// Spin's `{{ name }}` templates: literal text with variable references.
fn parse_template(text: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(TemplatePart::Literal(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("`{{` without a closing `}}`")?;
        let name = after[..end].trim();
        check_snake_id(name).map_err(|why| format!("{name:?} is not a variable name: {why}"))?;
        parts.push(TemplatePart::Var(name.to_string()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    Ok(parts)
}

fn template_vars(parts: &[TemplatePart]) -> Vec<&str> {
    parts
        .iter()
        .filter_map(|p| match p {
            TemplatePart::Var(v) => Some(v.as_str()),
            TemplatePart::Literal(_) => None,
        })
        .collect()
}

fn resolve_defaults(parts: &[TemplatePart], vars: &BTreeMap<String, AppVariable>) -> Option<String> {
    let mut out = String::new();
    for part in parts {
        match part {
            TemplatePart::Literal(s) => out.push_str(s),
            TemplatePart::Var(v) => out.push_str(vars.get(v)?.default.as_deref()?),
        }
    }
    Some(out)
}

/// Spin's variable names: lowercase ASCII words of letters and digits joined
/// by single underscores, starting with a letter.
fn check_snake_id(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    for (i, word) in name.split('_').enumerate() {
        let mut chars = word.chars();
        match chars.next() {
            None => return Err("words between underscores must not be empty".into()),
            Some(c) if c.is_ascii_lowercase() || (i > 0 && c.is_ascii_digit()) => {}
            Some(c) => return Err(format!("a word starts with {c:?}")),
        }
        if let Some(c) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit())) {
            return Err(format!("contains {c:?}"));
        }
    }
    Ok(())
}

/// What Spin accepts in `allowed_outbound_hosts` once templates are filled
/// in: `scheme://host[:port]`, a trailing `/` at most, no path.
fn spin_allowed_host(value: &str) -> Result<(), String> {
    let (scheme, rest) = value.trim().split_once("://").ok_or("no scheme (e.g. https://)")?;
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphabetic() || c == '*') {
        return Err(format!("bad scheme {scheme:?}"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err("no host".into());
    }
    if rest.contains('/') {
        return Err("a path is not allowed, only scheme://host[:port]".into());
    }
    Ok(())
}

fn mentioned_in_comment(text: &str, key: &str) -> bool {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix('#'))
        .any(|comment| comment.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|word| word == key))
}

fn string_list(value: Option<&toml::Value>) -> Vec<String> {
    value
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// runtime-config.toml
// ---------------------------------------------------------------------------

/// Checks the parts of a `runtime-config.toml` the collector relies on: the
/// `default` key-value store is mapped to a store kind Spin knows (Redis, for
/// replicas to share it) and variable providers are well formed.
pub fn check_runtime_config(toml_text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let doc: toml::Table = match toml_text.parse() {
        Ok(doc) => doc,
        Err(e) => return vec![Problem::new("runtime-config.toml", format!("not valid TOML: {e}"))],
    };
    match doc.get("key_value_store").and_then(|s| s.get("default")) {
        None => problems.push(Problem::new(
            "key_value_store.default",
            "missing: the collector's checkpoints would stay in a local SQLite file",
        )),
        Some(store) => match store.get("type").and_then(|t| t.as_str()) {
            Some("redis") => match store.get("url").and_then(|u| u.as_str()) {
                Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {}
                _ => problems.push(Problem::new("key_value_store.default.url", "needs a redis:// or rediss:// URL")),
            },
            Some("spin" | "azure_cosmos" | "aws_dynamo") => {}
            other => problems.push(Problem::new(
                "key_value_store.default.type",
                format!("{other:?} is not a key-value store type Spin knows"),
            )),
        },
    }
    let providers = doc.get("config_provider").and_then(|p| p.as_array());
    for (i, provider) in providers.into_iter().flatten().enumerate() {
        let subject = format!("config_provider[{i}]");
        let Some(table) = provider.as_table() else {
            problems.push(Problem::new(subject, "must be a table"));
            continue;
        };
        let (needed, allowed): (&[&str], &[&str]) = match table.get("type").and_then(|t| t.as_str()) {
            Some("vault") => (&["url", "token", "mount"], &["type", "url", "token", "mount", "prefix"]),
            Some("azure_key_vault") => {
                (&["vault_url"], &["type", "vault_url", "client_id", "client_secret", "tenant_id", "authority_host"])
            }
            other => {
                problems.push(Problem::new(
                    format!("{subject}.type"),
                    format!("{other:?} is not a variables provider Spin knows"),
                ));
                continue;
            }
        };
        for field in needed {
            if table.get(*field).and_then(|v| v.as_str()).is_none() {
                problems.push(Problem::new(format!("{subject}.{field}"), "missing"));
            }
        }
        for field in table.keys() {
            if !allowed.contains(&field.as_str()) {
                problems.push(Problem::new(format!("{subject}.{field}"), "unknown field; Spin refuses the file"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_into_literals_and_variables() {
        assert_eq!(
            parse_template("https://{{ host }}:{{port}}").unwrap(),
            vec![
                TemplatePart::Literal("https://".into()),
                TemplatePart::Var("host".into()),
                TemplatePart::Literal(":".into()),
                TemplatePart::Var("port".into()),
            ]
        );
        assert!(parse_template("{{ open").is_err());
        assert!(parse_template("{{ Bad }}").is_err());
    }

    #[test]
    fn spin_variable_names() {
        for ok in ["token", "tag_item_usage", "max_requests_per_minute", "a_1"] {
            assert!(check_snake_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Token", "a__b", "_a", "a_", "1a", "a-b"] {
            assert!(check_snake_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_host_values_follow_spins_rule() {
        assert!(spin_allowed_host("https://events.1password.com").is_ok());
        assert!(spin_allowed_host("https://collector-ap.devo.io:8443/").is_ok());
        assert!(spin_allowed_host("https://relay.example/devo").is_err());
        assert!(spin_allowed_host("events.1password.com").is_err());
    }

    #[test]
    fn semver_lines_match_wasmtime() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        assert_eq!(semver_line(&v("0.2.12")), semver_line(&v("0.2.6")));
        assert_ne!(semver_line(&v("0.3.0")), semver_line(&v("0.2.6")));
        assert_eq!(semver_line(&v("2.0.0")).as_deref(), Some("2"));
        assert_eq!(semver_line(&v("0.2.0-draft2")), None);
        assert_eq!(semver_line(&v("0.0.3")), None);
    }
}
