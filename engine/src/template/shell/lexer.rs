//! Just enough of the POSIX shell's lexer to tell where a spliced value would land: in an
//! unquoted word (at the top level or inside `$( )`, where quoting starts afresh), inside
//! quotes, in an expansion (`${ }`, `$(( ))`, backquotes, `$'...'`), right after a backslash or
//! a `$`, in a here-document or in a comment. Only the first is safe for a single-quoted value.
//! Constructs nest ([`Frame`] is a stack), so `"$(basename "...")"` is read as the shell reads it.

/// Where the shell reads the next character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Unquoted: a single-quoted value there is exactly one literal word.
    Word,
    /// Inside `'...'`: a quoted value's own quotes would end the string.
    SingleQuotes,
    /// Inside `"..."`: `$(...)` and backquotes still run, whatever quotes a value brings.
    DoubleQuotes,
    /// Inside `${...}`, `$((...))`, backquotes or `$'...'`, or right after `\` or `$`, where
    /// single quotes are read another way or not at all.
    Expansion,
    /// In a here-document's body, which expands `$(...)` unless its delimiter was quoted and
    /// often feeds another interpreter.
    HereDocument,
    /// In a comment: a newline in the value ends it, and what follows runs.
    Comment,
    /// Anywhere after a `$'...'` that holds a backslash: bash reads it as one string with
    /// escapes, dash (Debian's `/bin/sh`) as `$` and a single-quoted string that ends at the
    /// first `'`, so from there on the shells disagree about what is quoted.
    ShellsDiffer,
}

impl Context {
    /// How a message names the place.
    pub fn describe(self) -> &'static str {
        match self {
            Context::Word => "an unquoted word",
            Context::SingleQuotes => "'...' quotes",
            Context::DoubleQuotes => "\"...\" quotes",
            Context::Expansion => {
                "an expansion (${...}, $((...)), `...`, $'...', or after \\ or $)"
            }
            Context::HereDocument => "a here-document",
            Context::Comment => "a comment",
            Context::ShellsDiffer => {
                "text after a $'...' with a backslash, which dash and bash quote differently"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    /// Shell code: the top level, or the inside of `$( )` (`substitution`), where `parens`
    /// counts the parentheses opened since.
    Code {
        substitution: bool,
        parens: u32,
    },
    Single,
    Double,
    /// `${ ... }`.
    Param,
    /// `$(( ... ))`; `closing` once the first `)` of `))` is read.
    Arith {
        parens: u32,
        closing: bool,
    },
    Backquote,
    /// `$'...'` (bash, busybox): backslash escapes inside.
    AnsiC,
    Comment,
    /// Reading the word after `<<` (or `<<-`).
    HeredocWord {
        strip_tabs: bool,
        quoted: bool,
        word: String,
        started: bool,
    },
    /// In a here-document's body: `line` so far, while it can still become the delimiter
    /// (kept no longer, so that a loop in a body does not make endless states), and whether
    /// a backslash waits to see if a newline follows.
    Heredoc {
        delimiter: String,
        strip_tabs: bool,
        quoted: bool,
        line: Option<String>,
        backslash: bool,
    },
}

/// Fed the template's text piece by piece, in order; [`Lexer::context`] tells where a value
/// spliced in between would land.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lexer {
    stack: Vec<Frame>,
    /// A backslash was just read where it escapes the next character.
    escaped: bool,
    /// A `$` was just read: the next character may open an expansion.
    dollar: bool,
    /// `$(` was just opened: a `(` right now makes it `$((`.
    just_opened: bool,
    /// The last character ended a word (or nothing was read yet), so `#` starts a comment.
    at_word_start: bool,
    /// Here-documents whose bodies start at the next newline: (delimiter, strip tabs, quoted).
    pending: Vec<(String, bool, bool)>,
    /// `<` was just read in code.
    after_lt: bool,
    /// A `$'...'` held a backslash (see [`Context::ShellsDiffer`]).
    diverged: bool,
}

impl Default for Lexer {
    fn default() -> Lexer {
        Lexer {
            stack: vec![Frame::Code {
                substitution: false,
                parens: 0,
            }],
            escaped: false,
            dollar: false,
            just_opened: false,
            at_word_start: true,
            pending: Vec::new(),
            after_lt: false,
            diverged: false,
        }
    }
}

impl Lexer {
    pub fn context(&self) -> Context {
        if self.diverged {
            return Context::ShellsDiffer;
        }
        if self.escaped || self.dollar {
            return Context::Expansion;
        }
        match self.top() {
            Frame::Code { .. } | Frame::HeredocWord { .. } => Context::Word,
            Frame::Single => Context::SingleQuotes,
            Frame::Double => Context::DoubleQuotes,
            Frame::Param | Frame::Arith { .. } | Frame::Backquote | Frame::AnsiC => {
                Context::Expansion
            }
            Frame::Comment => Context::Comment,
            Frame::Heredoc { .. } => Context::HereDocument,
        }
    }

    /// True when the next character starts a new word.
    pub(crate) fn at_word_start(&self) -> bool {
        self.at_word_start && !self.escaped && !self.dollar
    }

    pub(crate) fn feed(&mut self, text: &str) {
        for c in text.chars() {
            self.char(c);
        }
    }

    fn top(&self) -> &Frame {
        self.stack.last().unwrap_or(&Frame::Comment)
    }

    fn pop(&mut self) {
        if self.stack.len() > 1 {
            self.stack.pop();
        }
    }

    fn char(&mut self, c: char) {
        if std::mem::take(&mut self.just_opened) && c == '(' {
            // `$((`: arithmetic, not a command substitution.
            self.stack.pop();
            self.stack.push(Frame::Arith {
                parens: 0,
                closing: false,
            });
            return;
        }
        if self.escaped {
            self.escaped = false;
            // A backslash-newline joins lines: the word state before it holds.
            if c != '\n' {
                self.at_word_start = false;
            }
            return;
        }
        if std::mem::take(&mut self.dollar) && self.expansion(c) {
            return;
        }
        match self.stack.last_mut() {
            Some(Frame::Code { .. }) => self.code(c),
            Some(Frame::Single) if c == '\'' => self.pop(),
            Some(Frame::Single) => {}
            Some(Frame::Double) => match c {
                '\\' => self.escaped = true,
                '"' => self.pop(),
                '$' => self.dollar = true,
                '`' => self.stack.push(Frame::Backquote),
                _ => {}
            },
            Some(Frame::Param) => match c {
                '\\' => self.escaped = true,
                '}' => self.pop(),
                '"' => self.stack.push(Frame::Double),
                '\'' => self.stack.push(Frame::Single),
                '$' => self.dollar = true,
                '`' => self.stack.push(Frame::Backquote),
                _ => {}
            },
            Some(Frame::Arith { parens, closing }) => match c {
                ')' if *closing => self.pop(),
                ')' if *parens == 0 => *closing = true,
                ')' => *parens -= 1,
                '(' => *parens += 1,
                '$' => self.dollar = true,
                _ => *closing = false,
            },
            Some(Frame::Backquote) => match c {
                '\\' => self.escaped = true,
                '`' => self.pop(),
                _ => {}
            },
            Some(Frame::AnsiC) => match c {
                '\\' => {
                    self.escaped = true;
                    self.diverged = true;
                }
                '\'' => self.pop(),
                _ => {}
            },
            Some(Frame::Comment) if c == '\n' => {
                self.pop();
                self.newline();
            }
            Some(Frame::Comment) => {}
            Some(Frame::HeredocWord { .. }) => self.heredoc_word(c),
            Some(Frame::Heredoc { .. }) => self.heredoc(c),
            None => {}
        }
    }

    /// The character after a `$`: true when it opened an expansion.
    fn expansion(&mut self, c: char) -> bool {
        let frame = match c {
            '(' => {
                self.just_opened = true;
                Frame::Code {
                    substitution: true,
                    parens: 0,
                }
            }
            '{' => Frame::Param,
            '\'' if matches!(self.top(), Frame::Code { .. }) => Frame::AnsiC,
            _ => return false,
        };
        self.stack.push(frame);
        self.at_word_start = true;
        true
    }

    fn code(&mut self, c: char) {
        let after_lt = std::mem::take(&mut self.after_lt);
        match c {
            '\\' => self.escaped = true,
            '\'' => self.stack.push(Frame::Single),
            '"' => self.stack.push(Frame::Double),
            '`' => self.stack.push(Frame::Backquote),
            '$' => self.dollar = true,
            '#' if self.at_word_start => self.stack.push(Frame::Comment),
            '<' if after_lt => self.stack.push(Frame::HeredocWord {
                strip_tabs: false,
                quoted: false,
                word: String::new(),
                started: false,
            }),
            '<' => self.after_lt = true,
            '(' | ')' => {
                if let Some(Frame::Code {
                    substitution: true,
                    parens,
                }) = self.stack.last_mut()
                {
                    if c == '(' {
                        *parens += 1;
                    } else if *parens > 0 {
                        *parens -= 1;
                    } else {
                        self.pop();
                    }
                }
            }
            '\n' => self.newline(),
            _ => {}
        }
        // A backslash decides nothing yet: before a newline it joins the lines as if absent.
        if c != '\n' && c != '\\' {
            self.at_word_start = c.is_whitespace() || ";&|()<>".contains(c);
        }
    }

    fn heredoc_word(&mut self, c: char) {
        let Some(Frame::HeredocWord {
            strip_tabs,
            quoted,
            word,
            started,
        }) = self.stack.last_mut()
        else {
            return;
        };
        if !*started && word.is_empty() && c == '-' && !*strip_tabs {
            *strip_tabs = true;
        } else if !*started && (c == ' ' || c == '\t') {
        } else if c.is_whitespace() || ";&|<>()".contains(c) {
            let done = (std::mem::take(word), *strip_tabs, *quoted);
            self.pending.push(done);
            self.pop();
            self.code(c);
        } else {
            *started = true;
            // Quotes around the delimiter mark the body literal; the word is the rest.
            if matches!(c, '\'' | '"' | '\\') {
                *quoted = true;
            } else {
                word.push(c);
            }
        }
    }

    fn heredoc(&mut self, c: char) {
        let Some(Frame::Heredoc {
            delimiter,
            strip_tabs,
            quoted,
            line,
            backslash,
        }) = self.stack.last_mut()
        else {
            return;
        };
        let escaped = std::mem::take(backslash);
        if c == '\n' {
            // In an unquoted body, a backslash-newline continues the line.
            if escaped {
                return;
            }
            let is_end = line.as_deref().is_some_and(|l| {
                let l = if *strip_tabs {
                    l.trim_start_matches('\t')
                } else {
                    l
                };
                l == delimiter.as_str()
            });
            if is_end {
                self.pop();
                self.newline();
            } else {
                *line = Some(String::new());
            }
            return;
        }
        let mut push = |ch: char| {
            if let Some(l) = line {
                l.push(ch);
                let t = if *strip_tabs {
                    l.trim_start_matches('\t')
                } else {
                    l
                };
                if !delimiter.starts_with(t) {
                    *line = None;
                }
            }
        };
        if escaped {
            push('\\');
        }
        if c == '\\' && !*quoted {
            *backslash = true;
        } else {
            push(c);
        }
    }

    /// At the end of a line of code: the first pending here-document begins.
    fn newline(&mut self) {
        self.at_word_start = true;
        if matches!(self.top(), Frame::Code { .. }) && !self.pending.is_empty() {
            let (delimiter, strip_tabs, quoted) = self.pending.remove(0);
            self.stack.push(Frame::Heredoc {
                delimiter,
                strip_tabs,
                quoted,
                line: Some(String::new()),
                backslash: false,
            });
        }
    }
}
