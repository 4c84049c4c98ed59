"""The /tasks routes."""

from datetime import date

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..database import Task, session

router = APIRouter(prefix="/tasks", tags=["tasks"])


class TaskIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    due: date


class TaskPatch(BaseModel):
    done: bool


class TaskOut(BaseModel):
    id: int
    title: str
    due: date
    done: bool
    overdue: bool


def shown(task: Task) -> TaskOut:
    overdue = not task.done and task.due < date.today()
    return TaskOut(id=task.id, title=task.title, due=task.due, done=task.done, overdue=overdue)


async def find(s: AsyncSession, task_id: int) -> Task:
    task = await s.get(Task, task_id)
    if task is None:
        raise HTTPException(status_code=404, detail="no such task")
    return task


@router.post("", response_model=TaskOut, status_code=status.HTTP_201_CREATED)
async def create_task(payload: TaskIn, s: AsyncSession = Depends(session)) -> TaskOut:
    task = Task(title=payload.title, due=payload.due, done=False)
    s.add(task)
    await s.commit()
    return shown(task)


@router.get("", response_model=list[TaskOut])
async def list_tasks(s: AsyncSession = Depends(session)) -> list[TaskOut]:
    return [shown(t) for t in await s.scalars(select(Task).order_by(Task.due, Task.id))]


@router.get("/{task_id}", response_model=TaskOut)
async def get_task(task_id: int, s: AsyncSession = Depends(session)) -> TaskOut:
    return shown(await find(s, task_id))


@router.patch("/{task_id}", response_model=TaskOut)
async def update_task(task_id: int, payload: TaskPatch, s: AsyncSession = Depends(session)) -> TaskOut:
    task = await find(s, task_id)
    task.done = payload.done
    await s.commit()
    return shown(task)
