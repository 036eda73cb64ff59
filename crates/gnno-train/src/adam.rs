//! Adam with L2 weight decay on every parameter but biases (PyTorch `Adam` with
//! `weight_decay`, which adds wd·p to the gradient). Written out here rather than
//! taken from tch so its state (moments, step) can be checkpointed and a resumed
//! run continues exactly where it stopped.
//!
//! On the CPU the moments live in host memory and a step is one fused loop per
//! parameter (its gradient and values copied out, the new values copied back):
//! about 5 passes over memory where the tensor form takes about 18, each with
//! its own allocation. Elsewhere the moments are flat tensors and a step is a
//! fixed number of kernels whatever the parameter count (what a GPU needs). Both
//! do each element's operations in the same f32 order as PyTorch's single-tensor
//! Adam. The flat form agrees with it to the bit; the host loop does too where
//! libtorch's f32 square root is correctly rounded. On some CPUs it is not
//! (libtorch takes a vector-math square root: on an AMD EPYC about 18% of values
//! one ulp off), and there the host loop, whose `sqrt` is IEEE's, can differ from
//! the tensor form by an ulp. Either form resumes itself exactly (tests).

use tch::{Device, Kind, Tensor};

/// Where the moments live, each laid out flat in `Adam::order`.
enum Moments {
    /// The CPU: host vectors, updated by `Adam::step_host`.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Other devices: flat tensors, updated by tensor ops.
    Flat { m: Tensor, v: Tensor },
}

pub struct Adam {
    params: Vec<(String, Tensor)>,
    /// The moments of every parameter, flat, laid out in `order` (the
    /// weight-decayed parameters first, so their decay is one op on a prefix);
    /// `span[k]` is parameter k's (offset, length) in them.
    moments: Moments,
    order: Vec<usize>,
    span: Vec<(i64, i64)>,
    n_decay: i64,
    pub step: i64,
    lr: f64,
    wd: f64,
    b1: f64,
    b2: f64,
    eps: f64,
}

impl Adam {
    /// `params` are sorted by name so the state layout is stable. Float
    /// parameters on the CPU get host moments, others flat tensors.
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, wd: f64) -> Self {
        let host = params
            .first()
            .is_none_or(|(_, p)| p.device() == Device::Cpu && p.kind() == Kind::Float);
        Self::with_moments(params, lr, wd, host)
    }

    fn with_moments(mut params: Vec<(String, Tensor)>, lr: f64, wd: f64, host: bool) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let decays = |name: &str| wd > 0.0 && !name.ends_with("bias");
        let mut order: Vec<usize> = (0..params.len()).collect();
        order.sort_by_key(|&k| !decays(&params[k].0));
        let mut span = vec![(0, 0); params.len()];
        let (mut off, mut n_decay) = (0i64, 0i64);
        for &k in &order {
            let n = params[k].1.numel() as i64;
            span[k] = (off, n);
            off += n;
            if decays(&params[k].0) {
                n_decay = off;
            }
        }
        let moments = if host {
            let n = usize::try_from(off).unwrap_or(0);
            Moments::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
            }
        } else {
            let opts = params
                .first()
                .map_or((Kind::Float, Device::Cpu), |(_, p)| (p.kind(), p.device()));
            Moments::Flat {
                m: Tensor::zeros([off], opts),
                v: Tensor::zeros([off], opts),
            }
        };
        Self {
            params,
            moments,
            order,
            span,
            n_decay,
            step: 0,
            lr,
            wd,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
        }
    }

    /// Parameter k's (offset, length) as indices into host memory.
    fn range(&self, k: usize) -> std::ops::Range<usize> {
        let (off, n) = self.span[k];
        let off = usize::try_from(off).unwrap_or(0);
        off..off + usize::try_from(n).unwrap_or(0)
    }

    /// Parameter k's slice of a flat tensor, in its shape (a view).
    fn part(&self, flat: &Tensor, k: usize) -> Tensor {
        let (off, n) = self.span[k];
        flat.narrow(0, off, n)
            .view(self.params[k].1.size().as_slice())
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    pub fn step(&mut self) {
        match &self.moments {
            Moments::Host { .. } => self.step_host(),
            Moments::Flat { m, v } => {
                let (m, v) = (m.shallow_clone(), v.shallow_clone());
                self.step_flat(&m, &v);
            }
        }
    }

    /// One step on the CPU, parameter by parameter (those without a gradient keep
    /// their moments and values): gradient and values copied to host memory, one
    /// loop moves the moments and the values, the values copied back.
    fn step_host(&mut self) {
        self.step += 1;
        let (bc1, bc2) = self.corrections();
        #[expect(
            clippy::cast_possible_truncation,
            reason = "f32 arithmetic, as PyTorch's on f32 tensors"
        )]
        let [b1, b2, c1, c2, bc1, bc2, eps, lr, wd] = [
            self.b1,
            self.b2,
            1.0 - self.b1,
            1.0 - self.b2,
            bc1,
            bc2,
            self.eps,
            self.lr,
            self.wd,
        ]
        .map(|x| x as f32);
        let (mut g, mut p) = (Vec::new(), Vec::new());
        for k in 0..self.params.len() {
            let grad = self.params[k].1.grad();
            if !grad.defined() {
                continue;
            }
            let decays = self.decays(k);
            let r = self.range(k);
            let Moments::Host { m, v } = &mut self.moments else {
                return;
            };
            let (m, v) = (&mut m[r.clone()], &mut v[r.clone()]);
            let param = &mut self.params[k].1;
            g.resize(r.len(), 0.0);
            p.resize(r.len(), 0.0);
            grad.copy_data(&mut g, r.len());
            param.copy_data(&mut p, r.len());
            for (((p, &g), m), v) in p.iter_mut().zip(&g).zip(m).zip(v) {
                // The tensor form's ops, element by element, in its order.
                let g = if decays { g + *p * wd } else { g };
                *m = *m * b1 + g * c1;
                *v = *v * b2 + g * g * c2;
                *p -= *m / bc1 / ((*v / bc2).sqrt() + eps) * lr;
            }
            let shape = param.size();
            tch::no_grad(|| {
                param.copy_(&Tensor::from_slice(&p).view(shape.as_slice()));
            });
        }
    }

    /// One step over all parameters at once: their gradients concatenated, the
    /// update computed on the flat tensors, then subtracted from each parameter.
    /// About 17 kernels a step plus the one subtraction per parameter tensor, where
    /// a loop over the tensors launches about 16 per tensor (what made a step slow
    /// on a GPU). Each element sees the same
    /// operations in the same order as in the per-parameter form (`step_each`), so
    /// the two agree to the bit.
    fn step_flat(&mut self, m: &Tensor, v: &Tensor) {
        let grads: Vec<Tensor> = self
            .order
            .iter()
            .map(|&k| self.params[k].1.grad())
            .collect();
        if grads.is_empty() || grads.iter().any(|g| !g.defined()) {
            return self.step_each(m, v);
        }
        self.step += 1;
        let (bc1, bc2) = self.corrections();
        tch::no_grad(|| {
            let flat: Vec<Tensor> = grads.iter().map(|g| g.reshape([-1])).collect();
            let g = Tensor::cat(&flat, 0);
            if self.n_decay > 0 {
                let decayed: Vec<Tensor> = self
                    .order
                    .iter()
                    .filter(|&&k| self.decays(k))
                    .map(|&k| self.params[k].1.reshape([-1]))
                    .collect();
                let p = Tensor::cat(&decayed, 0);
                let _ = g.narrow(0, 0, self.n_decay).g_add_(&(p * self.wd));
            }
            let upd = self.update(m, v, &g, bc1, bc2);
            for k in 0..self.params.len() {
                let u = self.part(&upd, k);
                let _ = self.params[k].1.g_sub_(&u);
            }
        });
    }

    /// The step parameter by parameter, skipping those without a gradient (a
    /// parameter the batch did not reach keeps its moments and its value).
    fn step_each(&mut self, m: &Tensor, v: &Tensor) {
        self.step += 1;
        let (bc1, bc2) = self.corrections();
        tch::no_grad(|| {
            for k in 0..self.params.len() {
                let g = self.params[k].1.grad();
                if !g.defined() {
                    continue;
                }
                let g = if self.decays(k) {
                    g + &self.params[k].1 * self.wd
                } else {
                    g
                };
                let (m, v) = (self.part(m, k), self.part(v, k));
                let upd = self.update(&m, &v, &g, bc1, bc2);
                let _ = self.params[k].1.g_sub_(&upd);
            }
        });
    }

    /// Whether parameter k takes weight decay (it lies in the flat prefix).
    fn decays(&self, k: usize) -> bool {
        self.span[k].1 > 0 && self.span[k].0 < self.n_decay
    }

    fn corrections(&self) -> (f64, f64) {
        #[expect(clippy::cast_possible_truncation, reason = "step counts are small")]
        let t = self.step as i32;
        (1.0 - self.b1.powi(t), 1.0 - self.b2.powi(t))
    }

    /// Moves the moments `m` and `v` (in place) by the gradient `g` and returns the
    /// update lr · (m / bc1) / (sqrt(v / bc2) + eps).
    fn update(&self, m: &Tensor, v: &Tensor, g: &Tensor, bc1: f64, bc2: f64) -> Tensor {
        let (mut m, mut v) = (m.shallow_clone(), v.shallow_clone());
        let _ = m.g_mul_scalar_(self.b1);
        let _ = m.g_add_(&(g * (1.0 - self.b1)));
        let _ = v.g_mul_scalar_(self.b2);
        let _ = v.g_add_(&(g * g * (1.0 - self.b2)));
        let denom = (&v / bc2).sqrt() + self.eps;
        &m / bc1 / denom * self.lr
    }

    /// Named state tensors for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("adam.step".to_owned(), Tensor::from(self.step))];
        // Copies, so each is saved as its own tensor (not the flat storage).
        for (k, (name, p)) in self.params.iter().enumerate() {
            let (m, v) = match &self.moments {
                Moments::Host { m, v } => {
                    let part =
                        |x: &[f32]| Tensor::from_slice(&x[self.range(k)]).view(p.size().as_slice());
                    (part(m), part(v))
                }
                Moments::Flat { m, v } => (self.part(m, k).copy(), self.part(v, k).copy()),
            };
            out.push((format!("adam.m.{name}"), m));
            out.push((format!("adam.v.{name}"), v));
        }
        out
    }

    /// Restore from checkpoint tensors (missing entries leave zeros). Err names
    /// an entry whose size is not its parameter's.
    pub fn restore(&mut self, named: &[(String, Tensor)]) -> Result<(), String> {
        let find = |n: &str| named.iter().find(|(k, _)| k == n).map(|(_, t)| t);
        if let Some(s) = find("adam.step") {
            self.step = s.int64_value(&[]);
        }
        for k in 0..self.params.len() {
            let r = self.range(k);
            for what in ["m", "v"] {
                let name = format!("adam.{what}.{}", self.params[k].0);
                let Some(t) = find(&name) else {
                    continue;
                };
                if t.numel() != r.len() {
                    return Err(format!(
                        "{name} holds {} values, its parameter {}",
                        t.numel(),
                        r.len()
                    ));
                }
                let src = t.to_kind(Kind::Float);
                match &mut self.moments {
                    Moments::Host { m, v } => {
                        let dst = if what == "m" { m } else { v };
                        src.copy_data(&mut dst[r.clone()], r.len());
                    }
                    Moments::Flat { m, v } => {
                        let flat = if what == "m" { m } else { v };
                        let (off, n) = self.span[k];
                        tch::no_grad(|| {
                            flat.narrow(0, off, n)
                                .copy_(&src.reshape([-1]).to_device(flat.device()));
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters of a few shapes, two of them biases.
    fn params(seed: i64) -> Vec<(String, Tensor)> {
        tch::manual_seed(seed);
        [
            ("a.weight", vec![7, 5]),
            ("a.bias", vec![5]),
            ("emb", vec![13, 4]),
            ("z.bias", vec![3]),
        ]
        .into_iter()
        .map(|(n, s)| {
            (
                n.to_owned(),
                Tensor::randn(s.as_slice(), (Kind::Float, tch::Device::Cpu))
                    .set_requires_grad(true),
            )
        })
        .collect()
    }

    /// Deep copies (libtorch's generator is shared by tests running in parallel, so
    /// reseeding does not promise equal draws).
    fn copies(ps: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        ps.iter()
            .map(|(n, p)| (n.clone(), p.detach().copy().set_requires_grad(true)))
            .collect()
    }

    /// An Adam over `ps` (the same tensors), with `rename` applied to the names;
    /// host moments (`Adam::new`'s pick for CPU parameters) or flat tensors.
    fn adam_with(
        ps: &[(String, Tensor)],
        rename: fn(&str) -> String,
        lr: f64,
        wd: f64,
        host: bool,
    ) -> Adam {
        let named = ps
            .iter()
            .map(|(n, p)| (rename(n), p.shallow_clone()))
            .collect();
        if host {
            let opt = Adam::new(named, lr, wd);
            assert!(matches!(opt.moments, Moments::Host { .. }));
            opt
        } else {
            Adam::with_moments(named, lr, wd, false)
        }
    }

    /// The state tensor `name` of a checkpoint.
    fn find<'a>(state: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
        &state.iter().find(|(k, _)| k == name).expect(name).1
    }

    fn set_grads(ps: &[(String, Tensor)], step: i64, skip: Option<&str>) {
        for (i, (name, p)) in ps.iter().enumerate() {
            let mut p = p.shallow_clone();
            p.zero_grad();
            if Some(name.as_str()) == skip {
                continue;
            }
            // A loss whose gradient is a fixed function of the step and the value.
            let w = (step * 7 + i as i64) as f64 * 0.1 + 0.3;
            let loss = (&p * &p * w).sum(Kind::Float) + (&p * -w).sin().sum(Kind::Float);
            loss.backward();
        }
    }

    /// PyTorch's single-tensor Adam with L2 decay, one parameter at a time, written
    /// out by hand: p −= lr·(m/bc1)/(sqrt(v/bc2)+eps) after m, v move by g + wd·p.
    /// With `exact_sqrt` the square root is the correctly rounded one (taken in
    /// f64, which rounds back to the f32 IEEE result), as the host loop's is;
    /// otherwise libtorch's f32 kernel, which on some CPUs is an ulp off.
    fn reference(
        ps: &[(String, Tensor)],
        ms: &mut [Tensor],
        vs: &mut [Tensor],
        t: i32,
        (lr, wd): (f64, f64),
        exact_sqrt: bool,
    ) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        tch::no_grad(|| {
            for (k, (name, p)) in ps.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if wd > 0.0 && !name.ends_with("bias") {
                    g + p * wd
                } else {
                    g
                };
                ms[k] = &ms[k] * b1 + &g * (1.0 - b1);
                vs[k] = &vs[k] * b2 + &g * &g * (1.0 - b2);
                let vhat = &vs[k] / bc2;
                let root = if exact_sqrt {
                    vhat.to_kind(Kind::Double).sqrt().to_kind(Kind::Float)
                } else {
                    vhat.sqrt()
                };
                let upd = &ms[k] / bc1 / (root + eps) * lr;
                let _ = p.shallow_clone().g_sub_(&upd);
            }
        });
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        Vec::<f32>::try_from(t.reshape([-1]))
            .expect("floats")
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    #[test]
    fn host_step_equals_the_per_parameter_step_to_the_bit() {
        equals_the_per_parameter_step(true);
    }

    #[test]
    fn flat_step_equals_the_per_parameter_step_to_the_bit() {
        equals_the_per_parameter_step(false);
    }

    fn equals_the_per_parameter_step(host: bool) {
        let (lr, wd) = (0.01, 0.05);
        let start = params(5);
        let (ours, theirs) = (copies(&start), copies(&start));
        let mut opt = adam_with(&ours, str::to_owned, lr, wd, host);
        let mut ms: Vec<Tensor> = theirs.iter().map(|(_, p)| p.zeros_like()).collect();
        let mut vs = ms.iter().map(Tensor::zeros_like).collect::<Vec<_>>();
        // "emb" has no gradient before step 3 (one left undefined, not zeroed):
        // steps 1 and 2 take the per-parameter path and leave its moments at 0.
        for t in 1..=6 {
            let skip = (t <= 2).then_some("emb");
            set_grads(&ours, t, skip);
            set_grads(&theirs, t, skip);
            opt.step();
            #[expect(clippy::cast_possible_truncation)]
            reference(&theirs, &mut ms, &mut vs, t as i32, (lr, wd), host);
            if t == 2 {
                let st = opt.state();
                let m = |n: &str| find(&st, n).abs().sum(Kind::Float).double_value(&[]);
                assert_eq!(m("adam.m.emb"), 0.0);
                assert!(m("adam.m.a.weight") > 0.0);
            }
        }
        assert_eq!(opt.step, 6);
        let state = opt.state();
        for (k, ((name, a), (_, b))) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(bits(a), bits(b), "{name}");
            let m = find(&state, &format!("adam.m.{name}"));
            let v = find(&state, &format!("adam.v.{name}"));
            assert_eq!(m.size(), a.size());
            assert_eq!(bits(m), bits(&ms[k]), "m of {name}");
            assert_eq!(bits(v), bits(&vs[k]), "v of {name}");
        }
        // The parameters moved, and biases took no decay: with wd on them they differ.
        assert_ne!(bits(&ours[0].1), bits(&start[0].1));
        assert_ne!(bits(&ours[2].1), bits(&start[2].1), "emb moved from step 3");
        let decayed = copies(&start);
        let mut all = adam_with(&decayed, |n| format!("{n}.w"), lr, wd, host);
        // (Three steps: Adam's first moves every element by ±lr whatever the decay.)
        for t in 1..=3 {
            set_grads(&decayed, t, None);
            all.step();
        }
        let plain = copies(&start);
        let mut opt1 = adam_with(&plain, str::to_owned, lr, wd, host);
        for t in 1..=3 {
            set_grads(&plain, t, None);
            opt1.step();
        }
        assert_ne!(
            bits(&decayed[1].1),
            bits(&plain[1].1),
            "a.bias decays once renamed"
        );
        assert_eq!(
            bits(&decayed[0].1),
            bits(&plain[0].1),
            "a.weight decays either way"
        );
    }

    #[test]
    fn restored_state_continues_exactly() {
        // Each kind of state restored into itself and into the other (a
        // checkpoint moves between a CPU and a GPU run).
        for (from, to) in [(true, true), (false, false), (true, false), (false, true)] {
            restores(from, to);
        }
    }

    fn restores(from: bool, to: bool) {
        let (lr, wd) = (0.02, 0.01);
        let a = params(9);
        let b = copies(&a);
        let mut oa = adam_with(&a, str::to_owned, lr, wd, from);
        for t in 1..=3 {
            set_grads(&a, t, None);
            oa.step();
        }
        // b takes a's values and optimizer state, then both go on.
        tch::no_grad(|| {
            for ((_, pa), (_, pb)) in a.iter().zip(&b) {
                pb.shallow_clone().copy_(pa);
            }
        });
        let mut ob = adam_with(&b, str::to_owned, lr, wd, to);
        // An entry of another size is refused, by name.
        let mut bad = oa.state();
        if let Some(e) = bad.iter_mut().find(|(n, _)| n == "adam.v.emb") {
            e.1 = e.1.narrow(0, 0, 12);
        }
        let err = ob.restore(&bad).expect_err("a short entry");
        assert!(err.contains("adam.v.emb") && err.contains("48"), "{err}");
        let mut ob = adam_with(&b, str::to_owned, lr, wd, to);
        ob.restore(&oa.state()).expect("its own state");
        assert_eq!(ob.step, 3);
        // The state moves whole: every moment to the bit.
        for ((name, x), (_, y)) in oa.state().iter().zip(&ob.state()) {
            assert_eq!(bits(x), bits(y), "{name}, {from} → {to}");
        }
        for t in 4..=5 {
            set_grads(&a, t, None);
            set_grads(&b, t, None);
            oa.step();
            ob.step();
        }
        for ((name, pa), (_, pb)) in a.iter().zip(&b) {
            if from == to {
                assert_eq!(bits(pa), bits(pb), "{name}, {from} → {to}");
            } else {
                // The two forms' square roots may differ by an ulp on some CPUs
                // (module doc): the steps after the move agree to f32 rounding.
                let off = (pa - pb).abs() - pa.abs() * 1e-6;
                let worst = off.max().double_value(&[]);
                assert!(worst <= 1e-9, "{name}, {from} → {to}: {worst}");
            }
        }
    }
}
