//! Compiling an agent definition to Cedar, loading its extra `.cedar` files and
//! validating everything against the Agent Space schema.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentspace_core::{DEFAULT_APPROVAL_TIMEOUT, Definition, EgressRule, TlsMode};
use cedar_policy::{
    Effect, Entities, Entity, Expression, Policy, PolicyId, PolicySet, Schema, ValidationMode,
    Validator,
};
use miette::Diagnostic;

use crate::error::PolicyError;
use crate::evaluate::{EntityCache, SetCache, uid};
use crate::prefilter::{ACTION, AGENT, Candidates, Guarded, TENANT};

/// The Agent Space Cedar schema (human-readable Cedar schema syntax).
pub const SCHEMA: &str = include_str!("schema.cedarschema");

/// Records whose attributes are whatever the request carried: the schema cannot type
/// them, so attribute accesses under them are accepted by validation and checked at
/// evaluation time (a missing attribute is an error, and errors never allow).
const OPEN_RECORDS: &[&str] = &["context.body", "context.headers", "context.arguments"];

pub(crate) fn schema() -> Result<&'static Schema, PolicyError> {
    static SCHEMA_CELL: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA_CELL
        .get_or_init(|| {
            Schema::from_cedarschema_str(SCHEMA)
                .map(|(s, _)| s)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PolicyError::Schema(e.clone()))
}

/// What the engine needs to know about each policy beyond its Cedar meaning.
#[derive(Clone, Debug, Default)]
pub(crate) struct PolicyMeta {
    /// The capability (egress rule) a permit grants; budgets are charged to it.
    pub(crate) capability: Option<String>,
    /// `@approval("...")`: the prompt, for forbid policies that mean "not without approval".
    pub(crate) approval: Option<String>,
    /// `@timeout("10m")` of an approval policy.
    pub(crate) timeout: Duration,
    /// `@reason("...")` of a forbid: the sentence a denial shows.
    pub(crate) reason: Option<String>,
    /// Whether the policy is a forbid.
    pub(crate) forbid: bool,
}

/// An agent definition compiled to Cedar and validated, with its extra policies.
#[derive(Clone, Debug)]
pub struct CompiledPolicies {
    pub(crate) tenant: String,
    pub(crate) agent: String,
    /// Permits and plain forbids.
    pub(crate) base: PolicySet,
    /// Forbids annotated `@approval`: evaluated only once `base` allows.
    pub(crate) approvals: PolicySet,
    pub(crate) meta: HashMap<PolicyId, PolicyMeta>,
    /// `base` and `approvals` cut by action and resource scope, so that a decision only
    /// evaluates the policies whose scope can match (Cedar evaluates every policy it is
    /// given; this index keeps latency flat as policies grow).
    pub(crate) index: HashMap<String, Slice>,
    /// The entities every request of this definition shares: the schema's actions, the
    /// tenant and the agent. A decision adds the user, the task and the resource.
    pub(crate) statics: Entities,
    /// The statics with every action entity: what the property tests compare against.
    #[cfg(test)]
    pub(crate) full_statics: Entities,
    pub(crate) entity_cache: EntityCache,
    pub(crate) set_cache: SetCache,
    generated: String,
    files: Vec<(String, String)>,
    warnings: Vec<String>,
}

/// The policies that can apply to one action: by the resource their scope names
/// (`resource == X`), and those whose scope names no single resource. Each list holds
/// base and `@approval` policies alike, with their pre-evaluable conditions.
#[derive(Clone, Debug, Default)]
pub(crate) struct Slice {
    /// By entity type name, then id.
    by_resource: HashMap<String, HashMap<String, Candidates>>,
    any: Candidates,
}

impl CompiledPolicies {
    /// The policies whose scope can match `action` (its name in the schema) on
    /// `resource` (entity type name and id); `None` when no policy can.
    pub(crate) fn slice(&self, action: &str, resource: (&str, &str)) -> Option<&Candidates> {
        let slice = self.index.get(action)?;
        Some(
            slice
                .by_resource
                .get(resource.0)
                .and_then(|ids| ids.get(resource.1))
                .unwrap_or(&slice.any),
        )
    }
}

impl Slice {
    /// The policies of this action whose scope names no single resource.
    #[cfg(test)]
    pub(crate) fn any(&self) -> &Candidates {
        &self.any
    }
}

/// Every action of the schema, with whether it is an HTTP method.
const ACTIONS: &[(&str, bool)] = &[
    ("GET", true),
    ("HEAD", true),
    ("POST", true),
    ("PUT", true),
    ("PATCH", true),
    ("DELETE", true),
    ("OPTIONS", true),
    ("dns", false),
    ("mcp", false),
    ("mcp_resource", false),
    ("mcp_prompt", false),
    ("mcp_server_request", false),
    ("spawn", false),
    ("tunnel", false),
];

fn action_uid(name: &str) -> String {
    format!("AgentSpace::Action::{}", quote(name))
}

/// Whether a policy's action scope can match `action`.
fn applies_to_action(policy: &Policy, action: &str, is_http: bool) -> bool {
    let matches = |uid: &cedar_policy::EntityUid| {
        let uid = uid.to_string();
        uid == action_uid(action) || (is_http && uid == action_uid("http"))
    };
    match policy.action_constraint() {
        cedar_policy::ActionConstraint::Any => true,
        cedar_policy::ActionConstraint::Eq(uid) => matches(&uid),
        cedar_policy::ActionConstraint::In(uids) => uids.iter().any(matches),
    }
}

/// The single resource a policy's scope is restricted to, if any: type name and id.
fn scoped_resource(policy: &Policy) -> Option<(String, String)> {
    match policy.resource_constraint() {
        cedar_policy::ResourceConstraint::Eq(uid) => {
            Some((uid.type_name().to_string(), uid.id().unescaped().to_owned()))
        }
        _ => None,
    }
}

fn build_index(base: &PolicySet, approvals: &PolicySet) -> HashMap<String, Slice> {
    let guarded: Vec<Arc<Guarded>> = base
        .policies()
        .map(|p| (p, false))
        .chain(approvals.policies().map(|p| (p, true)))
        .enumerate()
        .map(|(order, (p, approval))| Arc::new(Guarded::new(p.clone(), approval, order)))
        .collect();
    let mut index = HashMap::new();
    for (action, is_http) in ACTIONS {
        let mut slice = Slice::default();
        let applicable: Vec<&Arc<Guarded>> = guarded
            .iter()
            .filter(|g| applies_to_action(&g.policy, action, *is_http))
            .collect();
        // First the resources named by scopes, so each gets its own list.
        for g in &applicable {
            if let Some((ty, id)) = scoped_resource(&g.policy) {
                slice
                    .by_resource
                    .entry(ty)
                    .or_default()
                    .entry(id)
                    .or_default();
            }
        }
        for g in applicable {
            match scoped_resource(&g.policy) {
                Some((ty, id)) => {
                    if let Some(list) = slice
                        .by_resource
                        .get_mut(&ty)
                        .and_then(|ids| ids.get_mut(&id))
                    {
                        list.push(Arc::clone(g));
                    }
                }
                None => {
                    slice.any.push(Arc::clone(g));
                    for list in slice.by_resource.values_mut().flat_map(HashMap::values_mut) {
                        list.push(Arc::clone(g));
                    }
                }
            }
        }
        index.insert((*action).to_owned(), slice);
    }
    index
}

/// The tenant and the agent of `definition`, with the schema's action entities when
/// `all_actions` (otherwise a decision adds the one action it is about).
fn static_entities(definition: &Definition, all_actions: bool) -> Result<Entities, String> {
    let tenant = uid(TENANT, definition.tenant.as_str())?;
    let agent = uid(AGENT, definition.name.as_str())?;
    let actions = if all_actions {
        action_entities()?.clone()
    } else {
        Entities::empty()
    };
    actions
        .add_entities(
            [
                Entity::new_no_attrs(tenant.clone(), HashSet::new()),
                Entity::new_no_attrs(agent, HashSet::from([tenant])),
            ],
            None,
        )
        .map_err(|e| e.to_string())
}

/// The schema's action entities (`POST` in `http`, ...), made once per process.
pub(crate) fn action_entities() -> Result<&'static Entities, String> {
    static ACTIONS: OnceLock<Result<Entities, String>> = OnceLock::new();
    ACTIONS
        .get_or_init(|| {
            schema()
                .map_err(|e| e.to_string())?
                .action_entities()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether a policy's conditions name an action entity (`Action::"GET" in ...`): Cedar
/// then looks that action up in the entities, so every action must be there. The scope
/// only ever looks at the request's own action.
fn names_an_action(est: &serde_json::Value) -> bool {
    use serde_json::Value;
    match est {
        Value::Array(items) => items.iter().any(names_an_action),
        Value::Object(obj) => {
            obj.get("__entity")
                .and_then(|e| e.get("type"))
                .and_then(Value::as_str)
                == Some(ACTION)
                || obj.values().any(names_an_action)
        }
        _ => false,
    }
}

/// Where a policy came from, for error locations.
enum Origin<'a> {
    /// Generated from a definition field; `text` is the policy text.
    Generated { field: String, text: String },
    /// From a `.cedar` file; `text` is the whole file.
    File { name: String, text: &'a str },
}

impl CompiledPolicies {
    /// Compiles `definition` and reads, parses and validates its `spec.policies` files.
    pub fn compile(definition: &Definition) -> Result<Self, PolicyError> {
        let mut files = Vec::new();
        for path in &definition.governance.policies {
            let text =
                std::fs::read_to_string(path).map_err(|source| PolicyError::ReadPolicyFile {
                    path: path.clone(),
                    source,
                })?;
            files.push((path.display().to_string(), text));
        }
        Self::compile_with_files(definition, files)
    }

    /// Compiles `definition` with the given extra policy files (name, text) instead of
    /// reading `spec.policies`: for tests and tools that hold the text already.
    pub fn compile_with_files(
        definition: &Definition,
        files: Vec<(String, String)>,
    ) -> Result<Self, PolicyError> {
        let schema = schema()?;
        let def_file = definition.source.display().to_string();
        let generated = generate(definition, &def_file)?;

        let mut all = PolicySet::new();
        let mut origins: HashMap<PolicyId, Origin<'_>> = HashMap::new();
        let mut meta = HashMap::new();
        for g in &generated.policies {
            let id = PolicyId::new(&g.id);
            let policy =
                Policy::parse(Some(id.clone()), &g.text).map_err(|e| PolicyError::Field {
                    file: def_file.clone(),
                    field: g.field.clone(),
                    message: format!(
                        "does not compile to a valid Cedar policy: {}",
                        diagnostic_text(&e)
                    ),
                })?;
            let m = policy_meta(&policy).map_err(|message| PolicyError::Field {
                file: def_file.clone(),
                field: g.field.clone(),
                message,
            })?;
            meta.insert(id.clone(), m);
            all.add(policy).map_err(|e| PolicyError::Field {
                file: def_file.clone(),
                field: g.field.clone(),
                message: e.to_string(),
            })?;
            origins.insert(
                id,
                Origin::Generated {
                    field: g.field.clone(),
                    text: g.text.clone(),
                },
            );
        }

        for (name, text) in &files {
            let set = PolicySet::from_str(text).map_err(|e| located(name, text, &e))?;
            let mut policies: Vec<&Policy> = set.policies().collect();
            // Keep file order: ids `policy0`, `policy1`, ... sort by number.
            policies.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(0)
            });
            let mut search_from = 0;
            for (n, policy) in policies.into_iter().enumerate() {
                // A policy displays as its original text; find it to name its line.
                let source = policy.to_string();
                let offset = text
                    .get(search_from..)
                    .and_then(|rest| rest.find(&source))
                    .map(|o| o + search_from);
                if let Some(o) = offset {
                    search_from = o + source.len();
                }
                let (line, column) = line_col(text, offset.unwrap_or(0));
                let base = Path::new(name)
                    .file_name()
                    .map_or_else(|| name.clone(), |f| f.to_string_lossy().into_owned());
                let id_text = match (policy.annotation("id"), offset) {
                    (Some(id), _) => id.to_owned(),
                    (None, Some(_)) => format!("{base}:{line}"),
                    (None, None) => format!("{base}#{}", n + 1),
                };
                let id = PolicyId::new(&id_text);
                let here = |message: String| PolicyError::Policy {
                    file: name.clone(),
                    line,
                    column,
                    message,
                };
                if origins.contains_key(&id) {
                    return Err(here(format!(
                        "policy id `{id_text}` is already used; give this policy a distinct `@id(\"...\")`"
                    )));
                }
                let policy = policy.new_id(id.clone());
                let m = policy_meta(&policy).map_err(here)?;
                meta.insert(id.clone(), m);
                all.add(policy).map_err(|e| here(e.to_string()))?;
                origins.insert(
                    id,
                    Origin::File {
                        name: name.clone(),
                        text,
                    },
                );
            }
        }

        let validator = Validator::new(schema.clone());
        let result = validator.validate(&all, ValidationMode::Strict);
        for error in result.validation_errors() {
            let Some(origin) = origins.get(error.policy_id()) else {
                return Err(PolicyError::Field {
                    file: def_file.clone(),
                    field: "spec".to_owned(),
                    message: error.to_string(),
                });
            };
            let (text, offset) = match origin {
                Origin::Generated { text, .. } => (text.as_str(), label_offset(error)),
                Origin::File { text, .. } => (*text, label_offset(error)),
            };
            if is_open_record_access(error, text) {
                continue;
            }
            let message = format!("{}{}", error, help_text(error));
            return Err(match origin {
                Origin::Generated { field, .. } => PolicyError::Field {
                    file: def_file.clone(),
                    field: field.clone(),
                    message,
                },
                Origin::File { name, text } => {
                    let (line, column) = line_col(text, offset.unwrap_or(0));
                    PolicyError::Policy {
                        file: name.clone(),
                        line,
                        column,
                        message,
                    }
                }
            });
        }
        let warnings = result
            .validation_warnings()
            .map(|w| w.to_string())
            .collect();

        let mut base = PolicySet::new();
        let mut approvals = PolicySet::new();
        for policy in all.policies() {
            let is_approval = meta.get(policy.id()).is_some_and(|m| m.approval.is_some());
            let target = if is_approval {
                &mut approvals
            } else {
                &mut base
            };
            target.add(policy.clone()).map_err(|e| PolicyError::Field {
                file: def_file.clone(),
                field: "spec".to_owned(),
                message: e.to_string(),
            })?;
        }

        let index = build_index(&base, &approvals);
        // A policy whose JSON form cannot be had is assumed to name an action.
        let all_actions = base.policies().chain(approvals.policies()).any(|p| {
            p.to_json().map_or(true, |est| {
                est.get("conditions").is_some_and(names_an_action)
            })
        });
        let entities_error = |message| PolicyError::Field {
            file: def_file.clone(),
            field: "metadata".to_owned(),
            message,
        };
        let statics = static_entities(definition, all_actions).map_err(entities_error)?;
        #[cfg(test)]
        let full_statics = static_entities(definition, true).map_err(entities_error)?;
        Ok(Self {
            tenant: definition.tenant.to_string(),
            agent: definition.name.to_string(),
            base,
            approvals,
            meta,
            index,
            statics,
            #[cfg(test)]
            full_statics,
            entity_cache: EntityCache::default(),
            set_cache: SetCache::default(),
            generated: generated.text,
            files,
            warnings,
        })
    }

    /// The Cedar generated from the definition (with budgets and limits as comments),
    /// followed by the extra policy files, as `policy check --show` prints it.
    pub fn cedar_text(&self) -> String {
        let mut out = self.generated.clone();
        for (name, text) in &self.files {
            let _ = write!(out, "\n// ---- {name} ----\n{text}");
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// How many policies there are in all.
    pub fn len(&self) -> usize {
        self.base.num_of_policies() + self.approvals.num_of_policies()
    }

    /// Whether there are no policies (then everything is denied).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of every policy, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.meta.keys().map(ToString::to_string).collect();
        ids.sort();
        ids
    }

    /// Schema validation warnings (for example a policy that can never apply).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Reads the annotations the engine gives meaning to.
fn policy_meta(policy: &Policy) -> Result<PolicyMeta, String> {
    let forbid = policy.effect() == Effect::Forbid;
    let approval = policy.annotation("approval").map(str::to_owned);
    if approval.is_some() && !forbid {
        return Err(
            "`@approval` belongs on a `forbid` policy (it means: forbidden unless a human approves); change `permit` to `forbid` or remove the annotation"
                .to_owned(),
        );
    }
    let timeout = match policy.annotation("timeout") {
        Some(t) => agentspace_core::Duration::parse(t)
            .map(agentspace_core::Duration::get)
            .map_err(|e| format!("`@timeout`: {e}"))?,
        None => DEFAULT_APPROVAL_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err("`@timeout` must be longer than zero".to_owned());
    }
    Ok(PolicyMeta {
        capability: policy.annotation("capability").map(str::to_owned),
        approval,
        timeout,
        reason: policy.annotation("reason").map(str::to_owned),
        forbid,
    })
}

struct Generated {
    text: String,
    policies: Vec<GeneratedPolicy>,
}

struct GeneratedPolicy {
    id: String,
    field: String,
    text: String,
}

/// Writes the Cedar for a definition. Every value interpolated here was validated by
/// `agentspace-core` (names, hosts, methods, paths) or is quoted with [`quote`]; the
/// approval condition is parsed as one expression before it is inserted.
fn generate(def: &Definition, def_file: &str) -> Result<Generated, PolicyError> {
    let agent = format!("AgentSpace::Agent::{}", quote(def.name.as_str()));
    let tenant = format!("AgentSpace::Tenant::{}", quote(def.tenant.as_str()));
    let mut policies = Vec::new();
    let g = &def.governance;

    policies.push(GeneratedPolicy {
        id: "tenant".to_owned(),
        field: "metadata.tenant".to_owned(),
        text: format!(
            "@id(\"tenant\")\n@reason({})\nforbid (principal, action, resource)\nunless {{ principal in {tenant} && principal in {agent} }};\n",
            quote(&format!(
                "only tasks of agent `{}` in tenant `{}` are governed by this definition",
                def.name, def.tenant
            )),
        ),
    });

    for (i, rule) in g.egress.iter().enumerate() {
        let field = format!("spec.egress[{i}]");
        let hosts = host_condition(rule);
        let actions = if rule.tls == TlsMode::Passthrough {
            // Only the server name and port of a passed-through connection are known.
            "action == AgentSpace::Action::\"tunnel\"".to_owned()
        } else if rule.methods.is_empty() {
            "action in AgentSpace::Action::\"http\"".to_owned()
        } else {
            let list: Vec<String> = rule
                .methods
                .iter()
                .map(|m| format!("AgentSpace::Action::{}", quote(m)))
                .collect();
            format!("action in [{}]", list.join(", "))
        };
        let paths = if rule.paths.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = rule
                .paths
                .iter()
                .map(|p| format!("context.path like {}", quote(p)))
                .collect();
            format!("\nwhen {{ {} }}", list.join(" || "))
        };
        let name = rule.name.as_str();
        // One exact host goes in the scope, where the decision index can see it.
        let (resource, hosts) = match rule.hosts.as_slice() {
            [only] if !only.starts_with("*.") => (
                format!("resource == AgentSpace::Host::{}", quote(only)),
                "true".to_owned(),
            ),
            _ => ("resource".to_owned(), hosts),
        };
        let when_hosts = if hosts == "true" {
            String::new()
        } else {
            format!("\nwhen {{ {hosts} }}")
        };
        policies.push(GeneratedPolicy {
            id: format!("egress.{name}"),
            field: field.clone(),
            text: format!(
                "@id({id})\n@capability({cap})\npermit (\n  principal in {agent},\n  {actions},\n  {resource}\n){when_hosts}{paths};\n",
                id = quote(&format!("egress.{name}")),
                cap = quote(name),
            ),
        });
        policies.push(GeneratedPolicy {
            id: format!("egress.{name}.dns"),
            field: format!("{field}.hosts"),
            text: format!(
                "@id({id})\npermit (\n  principal in {agent},\n  action == AgentSpace::Action::\"dns\",\n  {resource}\n){when_hosts};\n",
                id = quote(&format!("egress.{name}.dns")),
            ),
        });
        if let Some(approval) = &rule.approval {
            let when_field = format!("{field}.approval.when");
            let (condition, prompt) = approval_condition(
                def_file,
                &when_field,
                approval.when.as_deref(),
                &format!("capability `{name}`"),
            )?;
            policies.push(GeneratedPolicy {
                id: format!("egress.{name}.approval"),
                field: when_field,
                text: format!(
                    "@id({id})\n@capability({cap})\n@approval({prompt})\n@timeout({timeout})\nforbid (\n  principal in {agent},\n  {actions},\n  {resource}\n){when_hosts}{paths}{condition};\n",
                    id = quote(&format!("egress.{name}.approval")),
                    cap = quote(name),
                    prompt = quote(&prompt),
                    timeout = quote(&format!("{}s", approval.timeout.as_secs())),
                ),
            });
        }
    }

    for (i, target) in g.spawn.iter().enumerate() {
        let id = format!("spawn.{target}");
        policies.push(GeneratedPolicy {
            text: format!(
                "@id({})\npermit (\n  principal in {agent},\n  action == AgentSpace::Action::\"spawn\",\n  resource == AgentSpace::Agent::{}\n);\n",
                quote(&id),
                quote(target.as_str()),
            ),
            id,
            field: format!("spec.spawn[{i}]"),
        });
    }

    for (i, server) in g.tools.servers.iter().enumerate() {
        let field = format!("spec.tools[{i}]");
        let name = server.name.as_str();
        let scope = format!("resource in AgentSpace::McpServer::{}", quote(name));
        for tool in &server.allow {
            let id = format!("tools.{name}.{tool}");
            policies.push(GeneratedPolicy {
                text: format!(
                    "@id({})\npermit (\n  principal in {agent},\n  action == AgentSpace::Action::\"mcp\",\n  resource == AgentSpace::Tool::{}\n);\n",
                    quote(&id),
                    quote(&format!("{name}/{tool}")),
                ),
                id,
                field: format!("{field}.allow"),
            });
        }
        if !server.resources.is_empty() {
            // One permit per server: the listing and Cedar match URIs the same way
            // (`like`, `*` for any characters; patterns cannot hold Cedar's escape).
            let id = format!("resources.{name}");
            let uris: Vec<String> = server
                .resources
                .iter()
                .map(|p| format!("context.uri like {}", quote(p)))
                .collect();
            policies.push(GeneratedPolicy {
                text: format!(
                    "@id({})\npermit (\n  principal in {agent},\n  action == AgentSpace::Action::\"mcp_resource\",\n  {scope}\n)\nwhen {{ {} }};\n",
                    quote(&id),
                    uris.join(" || "),
                ),
                id,
                field: format!("{field}.resources"),
            });
        }
        let methods: Vec<String> = server
            .relay
            .iter()
            .filter_map(|r| r.request_method())
            .map(|m| format!("context.method == {}", quote(m)))
            .collect();
        if !methods.is_empty() {
            let id = format!("relay.{name}");
            policies.push(GeneratedPolicy {
                text: format!(
                    "@id({})\npermit (\n  principal in {agent},\n  action == AgentSpace::Action::\"mcp_server_request\",\n  resource == AgentSpace::McpServer::{}\n)\nwhen {{ {} }};\n",
                    quote(&id),
                    quote(name),
                    methods.join(" || "),
                ),
                id,
                field: format!("{field}.relay"),
            });
        }
        for prompt in &server.prompts {
            let id = format!("prompts.{name}.{prompt}");
            policies.push(GeneratedPolicy {
                text: format!(
                    "@id({})\npermit (\n  principal in {agent},\n  action == AgentSpace::Action::\"mcp_prompt\",\n  resource == AgentSpace::Prompt::{}\n);\n",
                    quote(&id),
                    quote(&format!("{name}/{prompt}")),
                ),
                id,
                field: format!("{field}.prompts"),
            });
        }
        if let Some(approval) = &server.approval {
            let when_field = format!("{field}.approval.when");
            let (condition, prompt) = approval_condition(
                def_file,
                &when_field,
                approval.when.as_deref(),
                &format!("tool server `{name}`"),
            )?;
            let id = format!("tools.{name}.approval");
            policies.push(GeneratedPolicy {
                text: format!(
                    "@id({})\n@approval({})\n@timeout({})\nforbid (\n  principal in {agent},\n  action == AgentSpace::Action::\"mcp\",\n  {scope}\n){condition};\n",
                    quote(&id),
                    quote(&prompt),
                    quote(&format!("{}s", approval.timeout.as_secs())),
                ),
                id,
                field: when_field,
            });
        }
    }

    let mut text = format!(
        "// Generated by Agent Space from `{def_file}` ({digest}).\n// Agent `{name}` of tenant `{tenant_name}`; default deny, forbid overrides permit.\n",
        digest = def.digest,
        name = def.name,
        tenant_name = def.tenant,
    );
    let _ = writeln!(text, "// loopLimit: {}", g.loop_limit);
    let b = &g.budgets;
    let mut budget_lines = BTreeMap::new();
    if let Some(r) = b.task.requests {
        budget_lines.insert("task requests", r.to_string());
    }
    if let Some(r) = b.task.bytes {
        budget_lines.insert("task bytes", r.to_string());
    }
    if let Some(r) = b.task.tokens {
        budget_lines.insert("task tokens", r.to_string());
    }
    if let Some(t) = b.task_time {
        budget_lines.insert("task time", format!("{}s", t.as_secs()));
    }
    for (what, value) in budget_lines {
        let _ = writeln!(text, "// budget: {what} <= {value}");
    }
    if let Some(w) = &b.per_user {
        let _ = writeln!(
            text,
            "// budget: per user per {}s: {}",
            w.window.as_secs(),
            quota_text(&w.quota)
        );
    }
    for rule in &g.egress {
        if !rule.budget.is_unlimited() {
            let _ = writeln!(
                text,
                "// budget: capability `{}`: {}",
                rule.name,
                quota_text(&rule.budget)
            );
        }
    }
    for p in &policies {
        text.push('\n');
        text.push_str(&p.text);
    }
    Ok(Generated { text, policies })
}

fn quota_text(q: &agentspace_core::Quota) -> String {
    let parts: Vec<String> = [
        ("requests", q.requests),
        ("bytes", q.bytes),
        ("tokens", q.tokens),
    ]
    .into_iter()
    .filter_map(|(what, v)| v.map(|v| format!("{what} <= {v}")))
    .collect();
    parts.join(", ")
}

fn host_condition(rule: &EgressRule) -> String {
    let parts: Vec<String> = rule
        .hosts
        .iter()
        .map(|h| {
            if h.starts_with("*.") {
                format!("context.host like {}", quote(h))
            } else {
                format!("resource == AgentSpace::Host::{}", quote(h))
            }
        })
        .collect();
    parts.join(" || ")
}

/// A Cedar string literal.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether a validation error is an attribute access under an open record
/// (`context.body.amount`), which the schema cannot type.
fn is_open_record_access(error: &cedar_policy::ValidationError, text: &str) -> bool {
    use cedar_policy::ValidationError as V;
    if !matches!(error, V::UnsafeAttributeAccess(_)) {
        return false;
    }
    let Some(span) = error.labels().and_then(|mut l| l.next()) else {
        return false;
    };
    let snippet = text
        .get(span.offset()..span.offset() + span.len())
        .unwrap_or("");
    let compact: String = snippet.chars().filter(|c| !c.is_whitespace()).collect();
    OPEN_RECORDS.iter().any(|open| {
        compact
            .strip_prefix(open)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

fn label_offset(error: &dyn Diagnostic) -> Option<usize> {
    error
        .labels()
        .and_then(|mut l| l.next())
        .map(|s| s.offset())
}

/// A parse error located in a file.
fn located(name: &str, text: &str, e: &cedar_policy::ParseErrors) -> PolicyError {
    let offset = label_offset(e).unwrap_or(0);
    let (line, column) = line_col(text, offset);
    PolicyError::Policy {
        file: name.to_owned(),
        line,
        column,
        message: diagnostic_text(e),
    }
}

/// The error's message with its first label and help, on one line.
fn diagnostic_text(e: &dyn Diagnostic) -> String {
    let mut out = e.to_string();
    if let Some(label) = e
        .labels()
        .and_then(|mut l| l.next())
        .and_then(|l| l.label().map(str::to_owned))
    {
        let _ = write!(out, " ({label})");
    }
    out.push_str(&help_text(e));
    out
}

fn help_text(e: &dyn Diagnostic) -> String {
    e.help().map(|h| format!("; {h}")).unwrap_or_default()
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The `when` clause of an approval policy (empty without a condition) and the prompt
/// the approver is shown, for `subject` (a capability or a tool server). The condition is
/// checked to be a Cedar expression, and set on its own lines so that a trailing `//`
/// comment in it cannot swallow the closing brace.
fn approval_condition(
    def_file: &str,
    when_field: &str,
    when: Option<&str>,
    subject: &str,
) -> Result<(String, String), PolicyError> {
    let Some(expr) = when else {
        return Ok((String::new(), subject.to_owned()));
    };
    Expression::from_str(expr).map_err(|e| PolicyError::Field {
        file: def_file.to_owned(),
        field: when_field.to_owned(),
        message: format!(
            "`{expr}` is not a Cedar expression: {}",
            diagnostic_text(&e)
        ),
    })?;
    Ok((
        format!("\nwhen {{\n  ({expr}\n  )\n}}"),
        format!("{subject} when {expr}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_everything_cedar_would_read_as_syntax() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn schema_parses() {
        assert!(schema().is_ok(), "{:?}", schema().err());
    }
}
