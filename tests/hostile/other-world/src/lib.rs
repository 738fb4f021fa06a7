//! A valid component of another world: it exports `hello` and nothing of
//! `arbiter:policy`, so the host must refuse it when it links.

wit_bindgen::generate!({
    inline: "package test:other; world other { export hello: func() -> string; }",
});

struct Other;

impl Guest for Other {
    fn hello() -> String {
        "not a policy".into()
    }
}

export!(Other);
