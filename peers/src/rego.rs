//! The procurement policy in Rego (`policies/procurement.rego`), on
//! regorus: its interpreter, and its compiler to the RVM bytecode with the
//! VM running the program. The whole policy is Rego; the host only hands
//! it the wire JSON as `input` and the settings, merged over their
//! defaults when the policy is loaded, as `data.settings`.

use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::{Engine, Value};
use serde_json::json;

use crate::{Answer, Decider, Settings};

const POLICY: &str = include_str!("../policies/procurement.rego");
const ENTRY: &str = "data.procurement.decision";

/// The settings, merged over their defaults at load, as the policy's
/// `data`.
fn data(settings: &serde_json::Value) -> Result<Value, String> {
    let settings = Settings::of(settings)?;
    Value::from_json_str(&json!({ "settings": settings }).to_string()).map_err(|e| e.to_string())
}

fn engine(settings: &serde_json::Value) -> Result<Engine, String> {
    let mut engine = Engine::new();
    engine
        .add_policy("procurement.rego".into(), POLICY.into())
        .map_err(|e| e.to_string())?;
    engine
        .add_data(data(settings)?)
        .map_err(|e| e.to_string())?;
    Ok(engine)
}

fn answer(v: &Value) -> Result<Answer, String> {
    let field = |key: &str| v[key].clone();
    let text = |key: &str| {
        field(key)
            .as_string()
            .map(|s| s.to_string())
            .map_err(|_| format!("rego: `{key}` is not a string in {v}"))
    };
    Ok(Answer {
        outcome: text("outcome")?,
        rule: text("rule")?,
        risk: field("risk")
            .as_u8()
            .map_err(|_| format!("rego: `risk` is not 0-255 in {v}"))?,
    })
}

struct Interpreter(Engine);

pub(crate) fn load_interpreter(settings: &serde_json::Value) -> Result<Box<dyn Decider>, String> {
    Ok(Box::new(Interpreter(engine(settings)?)))
}

impl Decider for Interpreter {
    fn decide(&mut self, wire: &str) -> Result<Answer, String> {
        self.0
            .set_input(Value::from_json_str(wire).map_err(|e| e.to_string())?);
        let v = self.0.eval_rule(ENTRY.into()).map_err(|e| e.to_string())?;
        answer(&v)
    }
}

struct Rvm(RegoVM);

pub(crate) fn load_rvm(settings: &serde_json::Value) -> Result<Box<dyn Decider>, String> {
    let mut engine = engine(settings)?;
    let entry: regorus::Rc<str> = ENTRY.into();
    let compiled = engine
        .compile_with_entrypoint(&entry)
        .map_err(|e| e.to_string())?;
    let program: Arc<Program> =
        Compiler::compile_from_policy(&compiled, &[ENTRY]).map_err(|e| e.to_string())?;
    let mut vm = RegoVM::new();
    vm.load_program(program);
    vm.set_data(data(settings)?).map_err(|e| e.to_string())?;
    Ok(Box::new(Rvm(vm)))
}

impl Decider for Rvm {
    fn decide(&mut self, wire: &str) -> Result<Answer, String> {
        self.0
            .set_input(Value::from_json_str(wire).map_err(|e| e.to_string())?);
        let v = self.0.execute().map_err(|e| e.to_string())?;
        answer(&v)
    }
}
