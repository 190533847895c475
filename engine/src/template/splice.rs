//! Where a template splices values into the text it renders, for the checks of keys whose text
//! another parser reads (a shell, a URL): the template as a tree of raw text, emitted
//! expressions, branches and loops ([`tree`]), and a walk that follows a reader's state along
//! every path through it ([`follow`]).
//!
//! Every path counts, not the source order: `{% if a %}'{% endif %}{{ v | shell_quote }}` puts
//! the value inside quotes on one path, so the check must see both. [`follow`] keeps the set of
//! states the reader can be in at each place (branches add theirs; a loop body is followed until
//! it brings no new state), and a check looks at an emitted value in each of them.
//!
//! The walk is deliberately conservative: a name it cannot trace (a loop variable, a `set`
//! variable, a macro argument) counts as outside, so `{% for r in params.regions %}{{ r }}`
//! needs the quoting filter and `{{ r | shell_quote }}` has it. Another template (`include`,
//! `import`, `extends`) is refused outright. A macro's body is never read where it is defined:
//! its output reaches the text only through a call, which is an emit of its own.

use std::collections::BTreeSet;

use minijinja::machinery::{self, ast};
use minijinja::syntax::SyntaxConfig;

/// The most states a check follows at one place; a template that makes more is refused.
const MAX_STATES: usize = 32;
/// The most times a loop body is followed before its states are taken as unbounded.
const MAX_ROUNDS: usize = 8;

/// Filters whose result is always one string, whatever they are given.
const STRING_FILTERS: &[&str] = &[
    "string",
    "join",
    "tojson",
    "upper",
    "lower",
    "title",
    "capitalize",
    "trim",
    "replace",
    "indent",
    "urlencode",
    "escape",
    "e",
    "pprint",
];

pub enum Node<'s> {
    Piece(Piece<'s>),
    /// Exactly one arm renders (`if` / `elif` / `else`; an `if` without `else` has an empty one).
    Choice {
        line: usize,
        arms: Vec<Vec<Node<'s>>>,
    },
    /// `body` renders any number of times, `otherwise` when it rendered none (`for ... else`).
    Repeat {
        line: usize,
        body: Vec<Node<'s>>,
        otherwise: Vec<Node<'s>>,
    },
}

pub struct Piece<'s> {
    pub offset: u32,
    /// 1-based line within the template text.
    pub line: usize,
    /// The emitted expression as written; empty for raw text and constructs.
    pub expr: String,
    pub kind: Kind<'s>,
}

pub enum Kind<'s> {
    /// Template text, as the other parser will read it.
    Raw(&'s str),
    /// A value spliced in.
    Emit(Emit),
}

pub struct Emit {
    /// The quoting filter is its outermost one, and no enclosing block rewrites the result.
    pub quoted: bool,
    /// The text a constant expression renders (`{{ '"' }}`): the DAG file's own text.
    pub constant: Option<String>,
    /// The value under the quoting filter is one string by its form (`a ~ b`, `| join(',')`).
    pub stringy: bool,
    /// What this is when it is no expression (`another template`, `a shell_quote block`).
    construct: Option<String>,
    /// Every name the expression reads, and whether the template binds it itself.
    reads: Vec<(String, bool)>,
}

impl Emit {
    /// The first name it reads that is not flow's own (names the template binds never are),
    /// or the construct it is.
    pub fn outside(&self, trusted: &dyn Fn(&str) -> bool) -> Option<String> {
        if let Some(c) = &self.construct {
            return Some(c.clone());
        }
        self.reads
            .iter()
            .find(|(name, bound)| *bound || !trusted(name))
            .map(|(name, _)| name.clone())
    }
}

/// The template as a tree. `filter` is the quoting filter that makes an outside value safe in
/// this kind of text.
pub fn tree<'s>(source: &'s str, filter: &str) -> Result<Vec<Node<'s>>, String> {
    let tree = machinery::parse(source, "<template>", SyntaxConfig::default())
        .map_err(super::describe_error)?;
    // A name the template binds itself (`{% for ds in params.dates %}`, `{% set task_id = ... %}`,
    // a macro or its argument) is not flow's value of that name, whatever it is called.
    let mut bound = BTreeSet::new();
    bind_names(&tree, &mut bound);
    let walk = Walk {
        source,
        bound,
        filter,
    };
    Ok(walk.stmt(&tree, true))
}

/// What a check does at each piece, in one state of its reader.
pub trait Check {
    type State: Clone + PartialEq;
    fn raw(&mut self, state: &mut Self::State, text: &str);
    fn emit(&mut self, state: &mut Self::State, piece: &Piece<'_>, emit: &Emit);
    /// Branches or a loop at `line` leave more states than the check follows.
    fn lost(&mut self, line: usize);
}

/// Follows `check` along every path through `nodes` from `start`.
pub fn follow<C: Check>(check: &mut C, nodes: &[Node<'_>], start: C::State) {
    follow_all(check, nodes, vec![start]);
}

fn follow_all<C: Check>(
    check: &mut C,
    nodes: &[Node<'_>],
    mut states: Vec<C::State>,
) -> Vec<C::State> {
    for node in nodes {
        let line = match node {
            Node::Piece(piece) => {
                for state in &mut states {
                    match &piece.kind {
                        Kind::Raw(text) => check.raw(state, text),
                        Kind::Emit(emit) => check.emit(state, piece, emit),
                    }
                }
                dedup(&mut states);
                continue;
            }
            Node::Choice { line, arms } => {
                let mut out = Vec::new();
                for arm in arms {
                    out.extend(follow_all(check, arm, states.clone()));
                }
                states = out;
                *line
            }
            Node::Repeat {
                line,
                body,
                otherwise,
            } => {
                states = repeat(check, *line, body, otherwise, states);
                *line
            }
        };
        dedup(&mut states);
        if states.len() > MAX_STATES {
            check.lost(line);
            states.truncate(MAX_STATES);
        }
    }
    states
}

/// A loop: its body from every state it can start in, until no round brings a new one.
fn repeat<C: Check>(
    check: &mut C,
    line: usize,
    body: &[Node<'_>],
    otherwise: &[Node<'_>],
    start: Vec<C::State>,
) -> Vec<C::State> {
    let mut seen = start.clone();
    let mut frontier = start.clone();
    for round in 0.. {
        if round == MAX_ROUNDS || seen.len() > MAX_STATES {
            check.lost(line);
            break;
        }
        frontier = follow_all(check, body, frontier);
        frontier.retain(|s| !seen.contains(s));
        if frontier.is_empty() {
            break;
        }
        seen.extend(frontier.iter().cloned());
    }
    seen.extend(follow_all(check, otherwise, start));
    seen
}

fn dedup<S: PartialEq>(states: &mut Vec<S>) {
    let mut kept: Vec<S> = Vec::with_capacity(states.len());
    for s in states.drain(..) {
        if !kept.contains(&s) {
            kept.push(s);
        }
    }
    *states = kept;
}

struct Walk<'s, 'f> {
    source: &'s str,
    bound: BTreeSet<&'s str>,
    filter: &'f str,
}

impl<'s> Walk<'s, '_> {
    /// `quoting_holds` is false under a `{% filter %}` block other than the quoting one: such a
    /// filter rewrites the text after quoting (`replace("'", "")`), so there even a quoted
    /// outside value is refused.
    fn stmt(&self, stmt: &ast::Stmt<'s>, quoting_holds: bool) -> Vec<Node<'s>> {
        use ast::Stmt;
        match stmt {
            Stmt::Template(t) => self.body(&t.children, quoting_holds),
            Stmt::EmitRaw(r) => vec![Node::Piece(Piece {
                offset: r.span().start_offset,
                line: usize::from(r.span().start_line),
                expr: String::new(),
                kind: Kind::Raw(r.raw),
            })],
            Stmt::EmitExpr(e) => {
                let quoted = quoting_holds
                    && matches!(&e.expr, ast::Expr::Filter(f) if f.name == self.filter);
                vec![self.emit(e.span(), &e.expr, quoted)]
            }
            // What a set block fills, or a macro makes, reaches the text only where it is
            // emitted, and there it is untraced.
            Stmt::Set(_) | Stmt::SetBlock(_) | Stmt::Do(_) | Stmt::Macro(_) => Vec::new(),
            Stmt::ForLoop(f) => vec![Node::Repeat {
                line: usize::from(f.span().start_line),
                body: self.body(&f.body, quoting_holds),
                otherwise: self.body(&f.else_body, quoting_holds),
            }],
            Stmt::IfCond(c) => vec![Node::Choice {
                line: usize::from(c.span().start_line),
                arms: vec![
                    self.body(&c.true_body, quoting_holds),
                    self.body(&c.false_body, quoting_holds),
                ],
            }],
            Stmt::WithBlock(w) => self.body(&w.body, quoting_holds),
            // Escaping rewrites the quoting filter's `'` (as `&#x27;`): quoting cannot hold.
            Stmt::AutoEscape(a) => self.body(&a.body, false),
            Stmt::FilterBlock(f) => self.filter_block(f, quoting_holds),
            Stmt::Block(b) => self.body(&b.body, quoting_holds),
            // The call's output is the macro's, with the body as `caller()` inside it.
            Stmt::CallBlock(c) => vec![self.construct(c.span(), "a call block", false)],
            Stmt::Extends(s) => vec![self.construct(s.span(), "another template", false)],
            Stmt::Include(s) => vec![self.construct(s.span(), "another template", false)],
            Stmt::Import(s) => vec![self.construct(s.span(), "another template", false)],
            Stmt::FromImport(s) => vec![self.construct(s.span(), "another template", false)],
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        }
    }

    fn body(&self, stmts: &[ast::Stmt<'s>], quoting_holds: bool) -> Vec<Node<'s>> {
        stmts
            .iter()
            .flat_map(|s| self.stmt(s, quoting_holds))
            .collect()
    }

    fn filter_block(
        &self,
        f: &ast::Spanned<ast::FilterBlock<'s>>,
        quoting_holds: bool,
    ) -> Vec<Node<'s>> {
        let quotes_all = matches!(&f.filter,
            ast::Expr::Filter(flt) if flt.name == self.filter && flt.expr.is_none());
        if quotes_all && quoting_holds {
            // The whole block becomes one quoted word, whatever it holds.
            let what = format!("a {} block", self.filter);
            return vec![self.construct(f.span(), &what, true)];
        }
        // Another filter rewrites the block's own text too, so what follows it cannot be read.
        let mut nodes = self.body(&f.body, false);
        nodes.push(self.construct(f.span(), "a filter block", false));
        nodes
    }

    /// An emitted expression, with every name it reads (minijinja's own analysis of the
    /// expression alone, so names bound by an enclosing loop or `set` show up as untraced).
    fn emit(&self, span: machinery::Span, expr: &ast::Expr<'s>, quoted: bool) -> Node<'s> {
        let text = self
            .source
            .get(span.start_offset as usize..span.end_offset as usize)
            .unwrap_or_default()
            .trim();
        let (reads, construct) = match super::references(&format!("{{{{ {text} }}}}")) {
            Ok(names) => {
                let reads = names
                    .into_iter()
                    .map(|n| {
                        let head = n.split('.').next().unwrap_or_default();
                        let bound = self.bound.contains(head);
                        (n, bound)
                    })
                    .collect();
                (reads, None)
            }
            // The whole template parsed, so its parts do; refuse what cannot be read anyway.
            Err(_) => (Vec::new(), Some(text.to_string())),
        };
        // An expression that reads no name renders the same every time: it is the file's
        // own text, as `{{ '"' }}` or `{{ "'" ~ "x" }}` write it.
        let constant = match construct {
            None if reads.is_empty() => {
                super::render(&format!("{{{{ {text} }}}}"), &().into()).ok()
            }
            _ => None,
        };
        let inner = match expr {
            ast::Expr::Filter(f) if quoted => f.expr.as_ref(),
            _ => None,
        };
        Node::Piece(Piece {
            offset: span.start_offset,
            line: usize::from(span.start_line),
            expr: text.to_string(),
            kind: Kind::Emit(Emit {
                quoted,
                constant,
                stringy: inner.is_some_and(stringy),
                construct,
                reads,
            }),
        })
    }

    fn construct(&self, span: machinery::Span, what: &str, quoted: bool) -> Node<'s> {
        Node::Piece(Piece {
            offset: span.start_offset,
            line: usize::from(span.start_line),
            expr: String::new(),
            kind: Kind::Emit(Emit {
                quoted,
                constant: None,
                stringy: quoted,
                construct: Some(what.into()),
                reads: Vec::new(),
            }),
        })
    }
}

/// True when `expr` is one string by its form, whatever the values in it.
fn stringy(expr: &ast::Expr<'_>) -> bool {
    match expr {
        ast::Expr::Const(c) => c.value.as_str().is_some(),
        ast::Expr::BinOp(b) => matches!(b.op, ast::BinOpKind::Concat),
        ast::Expr::Filter(f) => STRING_FILTERS.contains(&f.name),
        _ => false,
    }
}

/// Every name `stmt` binds anywhere: loop, `set` and `with` targets, macros and their arguments.
fn bind_names<'s>(stmt: &ast::Stmt<'s>, out: &mut BTreeSet<&'s str>) {
    use ast::Stmt;
    let body = |stmts: &[ast::Stmt<'s>], out: &mut BTreeSet<&'s str>| {
        stmts.iter().for_each(|s| bind_names(s, out))
    };
    match stmt {
        Stmt::Template(t) => body(&t.children, out),
        Stmt::ForLoop(f) => {
            target_names(&f.target, out);
            body(&f.body, out);
            body(&f.else_body, out);
        }
        Stmt::IfCond(c) => {
            body(&c.true_body, out);
            body(&c.false_body, out);
        }
        Stmt::WithBlock(w) => {
            w.assignments.iter().for_each(|(t, _)| target_names(t, out));
            body(&w.body, out);
        }
        Stmt::Set(s) => target_names(&s.target, out),
        Stmt::SetBlock(s) => {
            target_names(&s.target, out);
            body(&s.body, out);
        }
        Stmt::AutoEscape(a) => body(&a.body, out),
        Stmt::FilterBlock(f) => body(&f.body, out),
        Stmt::Block(b) => body(&b.body, out),
        Stmt::Macro(m) => {
            out.insert(m.name);
            m.args.iter().for_each(|a| target_names(a, out));
            body(&m.body, out);
        }
        Stmt::CallBlock(c) => {
            c.macro_decl.args.iter().for_each(|a| target_names(a, out));
            body(&c.macro_decl.body, out);
        }
        _ => {}
    }
}

fn target_names<'s>(expr: &ast::Expr<'s>, out: &mut BTreeSet<&'s str>) {
    match expr {
        ast::Expr::Var(v) => {
            out.insert(v.id);
        }
        ast::Expr::Tuple(t) => t.items.iter().for_each(|i| target_names(i, out)),
        ast::Expr::List(l) => l.items.iter().for_each(|i| target_names(i, out)),
        ast::Expr::GetAttr(g) => target_names(&g.expr, out),
        _ => {}
    }
}
