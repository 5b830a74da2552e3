//! The engine the CLI and the page share (`sparsedit::engine`): the CPU and GPU paths report the
//! same steps (grid, timestep, x0 preview, attention maps), end on the same sample, stop the same
//! way on a cancel (the partly denoised latent), and check requests the same way.
//! GPU parts run on lavapipe in CI; with CI=true a missing adapter is a failure.

mod common;

use std::rc::Rc;

use common::*;
use sparsedit::config::{GridSchedule, PooledMiddle};
use sparsedit::diffusion::SamplerKind;
use sparsedit::engine::{Engine, SampleRequest, Sampled};
use sparsedit::import::{infer_config, read_checkpoint, ImportOptions};
use sparsedit::layout::block_layouts;
use sparsedit::Config;

fn fixture(case: &str, file: &str) -> (Config, sparsedit::model::TensorMap) {
    let want = fixture_config(case);
    let map = read_checkpoint(&fixture_dir(case).join(file)).unwrap();
    let cfg = infer_config(&map, &ImportOptions { heads: Some(want.num_heads), semantic_size: Some(want.semantic_size) }).unwrap();
    (cfg, map)
}

/// The CPU engine, and the GPU engine on the same weights when there is an adapter.
fn engines(case: &str, file: &str) -> (Engine, Option<Engine>) {
    let (cfg, map) = fixture(case, file);
    let cpu = Engine::from_tensors(None, cfg.clone(), map.clone()).unwrap();
    let gpu = gpu_or_skip().map(|g| Engine::from_tensors(Some(Rc::new(g)), cfg, map).unwrap());
    (cpu, gpu)
}

/// Everything a run reported, step by step.
#[derive(Default)]
struct Record {
    grids: Vec<usize>,
    timesteps: Vec<usize>,
    previews: Vec<Vec<f32>>,
    /// (block, kind, tq, tk, probs) of every map of every step.
    maps: Vec<Vec<(usize, &'static str, usize, usize, Vec<f32>)>>,
}

fn run(engine: &Engine, req: &SampleRequest, stop_after: Option<usize>) -> (Sampled, Record) {
    let mut rec = Record::default();
    let out = pollster::block_on(engine.sample(req, |s| {
        rec.grids.push(s.grid);
        rec.timesteps.push(s.timestep);
        if let Some(p) = s.pred_x0 {
            rec.previews.push(p.to_vec());
        }
        rec.maps.push(s.attention.iter().map(|a| (a.block, a.kind.name(), a.tq, a.tk, a.probs.clone())).collect());
        Ok(stop_after != Some(s.iter))
    }))
    .unwrap();
    (out, rec)
}

fn traced_request() -> SampleRequest {
    SampleRequest {
        label: 3,
        num: 2,
        steps: 5,
        sampler: SamplerKind::Ddim { eta: 0.0 },
        cfg_scale: 4.0,
        seed: 7,
        schedule: Some(GridSchedule::Timestep { r_min: 0.3, r_max: 0.8 }),
        preview: true,
        trace: true,
        ..SampleRequest::default()
    }
}

#[test]
fn cpu_and_gpu_report_the_same_steps_and_sample() {
    let (cpu, gpu) = engines("sparse_nondiv", "model.pt");
    let req = traced_request();
    let plan = req.plan(cpu.cfg()).unwrap();
    let (a, ra) = run(&cpu, &req, None);
    // The plan is what ran: grids and timesteps per step, the noisiest first, t = 999 included
    // (respacing "5", the official default).
    assert_eq!(ra.grids, plan.grids);
    assert_eq!(ra.timesteps, plan.timesteps);
    assert_eq!(ra.timesteps[0], 999);
    assert!(ra.grids.windows(2).all(|w| w[0] <= w[1]), "coarser grids at the noisy start: {:?}", ra.grids);
    assert!(!a.cancelled && a.steps_done == 5);
    assert_eq!(ra.previews.len(), 5);
    // The CPU path now traces too: merge + recover of both SDTMs at every step, first image.
    let layout = block_layouts(cpu.cfg(), ra.grids[0]);
    for maps in &ra.maps {
        assert_eq!(maps.len(), 4, "2 SDTMs x (merge + recover)");
        for (block, kind, tq, tk, probs) in maps {
            assert_eq!(*kind, layout[*block].kind.name());
            assert_eq!(probs.len(), tq * tk);
            for row in probs.chunks(*tk) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{kind} block {block}: a row of the map sums to {}", row.iter().sum::<f32>());
            }
        }
    }
    let Some(gpu) = gpu else { return };
    let (b, rb) = run(&gpu, &req, None);
    assert_eq!((rb.grids, rb.timesteps), (ra.grids.clone(), ra.timesteps.clone()));
    assert_close("GPU vs CPU sample", &b.latent, &a.latent, 1e-3);
    for (i, (p, q)) in rb.previews.iter().zip(&ra.previews).enumerate() {
        assert_close(&format!("step {i} x0 preview, GPU vs CPU"), p, q, 1e-3);
    }
    for (i, (m, n)) in rb.maps.iter().zip(&ra.maps).enumerate() {
        assert_eq!(m.len(), n.len());
        for (x, y) in m.iter().zip(n) {
            assert_eq!((x.0, x.1, x.2, x.3), (y.0, y.1, y.2, y.3));
            assert_close(&format!("step {i} block {} attention map, GPU vs CPU", x.0), &x.4, &y.4, 1e-3);
        }
    }
    eprintln!("engine GPU vs CPU: sample max relative error {:.2e}", max_rel_err(&b.latent, &a.latent));
}

#[test]
fn a_cancel_returns_the_partly_denoised_latent_on_both_paths() {
    let (cpu, gpu) = engines("sparse_p4_gray", "model.safetensors");
    let req = SampleRequest { preview: false, trace: false, ..traced_request() };
    let (full, _) = run(&cpu, &req, None);
    let (part, rec) = run(&cpu, &req, Some(1));
    assert!(part.cancelled, "stopped after step 2 of 5");
    assert_eq!((part.steps_done, rec.grids.len()), (2, 2));
    assert_eq!(part.shape, full.shape);
    assert_eq!(part.latent.len(), full.latent.len());
    assert!(part.latent.iter().all(|v| v.is_finite()));
    assert!(part.latent.iter().zip(&full.latent).any(|(a, b)| a != b), "a partial latent, not the sample");
    // A 2-step run's latent is not the same thing (another respacing): the partial latent is the
    // state of this run after its second step. Stopping at the last step is not a cancel.
    let (last, _) = run(&cpu, &req, Some(4));
    assert!(!last.cancelled);
    assert_eq!(last.latent, full.latent);
    let Some(gpu) = gpu else { return };
    let (gpart, grec) = run(&gpu, &req, Some(1));
    assert!(gpart.cancelled);
    assert_eq!((gpart.steps_done, grec.grids.len()), (2, 2));
    assert_close("GPU vs CPU partial latent", &gpart.latent, &part.latent, 1e-3);
}

#[test]
fn requests_are_checked_before_any_work() {
    let (cpu, _) = engines("sparse_8to3", "model.pt");
    let cfg = cpu.cfg().clone();
    let ok = SampleRequest { steps: 3, ..SampleRequest::default() };
    let err = |r: SampleRequest| r.plan(&cfg).err().map(|e| (e.kind(), e.to_string())).expect("an error");
    // The null label is a class like the others (unconditional); one past it is not.
    assert!(SampleRequest { label: cfg.num_classes as i64, ..ok.clone() }.plan(&cfg).is_ok());
    let (kind, msg) = err(SampleRequest { label: cfg.num_classes as i64 + 1, ..ok.clone() });
    assert_eq!(kind, "invalid_argument");
    assert!(msg.contains("out of range"), "{msg}");
    assert!(err(SampleRequest { label: -1, ..ok.clone() }).1.contains("out of range"));
    assert!(err(SampleRequest { steps: 0, ..ok.clone() }).1.contains("steps"));
    assert!(err(SampleRequest { steps: 1001, ..ok.clone() }).1.contains("steps"));
    assert!(err(SampleRequest { cfg_scale: f64::NAN, ..ok.clone() }).1.contains("finite"));
    assert!(err(SampleRequest { sampler: SamplerKind::Ddim { eta: 1.5 }, ..ok.clone() }).1.contains("eta"));
    assert!(err(SampleRequest { num: 0, ..ok.clone() }).1.contains("at least 1"));
    assert!(err(SampleRequest { latent: Some(vec![0.0; 7]), ..ok.clone() }).1.contains("latent"));
    assert!(err(SampleRequest { schedule: Some(GridSchedule::Fixed(0)), ..ok.clone() }).1.contains("grid"));
    assert!(err(SampleRequest { schedule: Some(GridSchedule::Fixed(cfg.grid() + 1)), ..ok.clone() }).1.contains("outside"));
    assert!(err(SampleRequest { schedule: Some(GridSchedule::Timestep { r_min: 0.9, r_max: 0.1 }), ..ok.clone() }).1.contains("r_min"));
    assert_eq!(err(SampleRequest { respacing: Some("x".into()), ..ok.clone() }).0, "invalid_argument");
    // The guided channels: the official first 3 unless all are asked for.
    let plan = ok.plan(&cfg).unwrap();
    assert_eq!(plan.guidance.map(|g| g.guided_channels), Some(3));
    let all = SampleRequest { guide_all_channels: true, ..ok.clone() }.plan(&cfg).unwrap();
    assert_eq!(all.guidance.map(|g| g.guided_channels), Some(cfg.in_channels));
    assert!(SampleRequest { cfg_scale: 1.0, ..ok.clone() }.plan(&cfg).unwrap().guidance.is_none());
    // A model without a null label cannot guide.
    let mut no_null = cfg.clone();
    no_null.class_null = false;
    assert!(err2(&no_null, &ok).contains("null label"));
    // The training-free pooled middle needs a grid coarser than the dense one.
    let (dense_cfg, _) = fixture("dit_dense", "model.pt");
    let pooled = dense_cfg.with_pooled_middle(Some(PooledMiddle { start: 1, end: 2 })).unwrap();
    assert!(err2(&pooled, &SampleRequest { schedule: Some(GridSchedule::Fixed(pooled.grid())), ..ok.clone() }).contains("coarser"));
    // MACs of the run: every block at each step's grid, both CFG rows.
    let per_forward: u64 = block_layouts(&cfg, cfg.semantic_size).iter().map(|b| b.macs).sum();
    assert_eq!(plan.block_macs(&cfg), per_forward * 3 * 2);
}

fn err2(cfg: &Config, r: &SampleRequest) -> String {
    r.plan(cfg).err().expect("an error").to_string()
}
